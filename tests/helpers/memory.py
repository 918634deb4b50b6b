"""Peak memory of a command and everything it starts, from getrusage: the kernel keeps every
process's high-water mark, so no sampling can miss a short peak."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

# A process inherits the high-water mark of the one that spawned it (exec keeps it), so the
# command is started from this small launcher rather than from the test process: the launcher's
# RUSAGE_CHILDREN is then the largest peak of the command or any process below it.
_LAUNCHER = """
import json, resource, subprocess, sys
try:
    code = subprocess.call(sys.argv[3:], timeout=float(sys.argv[2]))
except subprocess.TimeoutExpired:
    code = -9
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as out:
    json.dump({"returncode": code, "peak_mb": peak_kb / 1024}, out)
"""


def run_measured(cmd: list[str], timeout: float, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run `cmd` (output captured as text); returns the result and the peak resident memory, MB,
    of the largest single process among `cmd` and its descendants."""
    with tempfile.TemporaryDirectory(prefix="peak-") as folder:
        report = Path(folder) / "peak.json"
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), str(timeout), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            **kwargs,
        )
        measured = json.loads(report.read_text())
    done.returncode = measured["returncode"]
    return done, measured["peak_mb"]


def seed_job_memory_limit_mb() -> int:
    """The seed rule's `mem_mb`: the memory the seed job is configured to stay within."""
    import re

    rules = (Path(__file__).resolve().parents[2] / "workflow" / "rules" / "seed.smk").read_text()
    rule = rules[rules.index("\nrule seed:") :]
    return int(re.search(r"mem_mb=(\d+)", rule).group(1))
