"""Reading the real local Slurm's accounting and the processes a run left (no tests here)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def sacct_jobs(job_ids: list[str]) -> list[dict]:
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "--parsable2",
            "-j",
            ",".join(job_ids),
            "-o",
            "JobID,JobName,Partition,AllocTRES,State,SubmitLine",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    fields = ("job_id", "name", "partition", "tres", "state")
    jobs = []
    for line in out.splitlines():
        if line.strip():
            values = line.split("|")
            # The submit line (sbatch's command line) comes last: it may hold the delimiter.
            jobs.append({**dict(zip(fields, values)), "submit_line": "|".join(values[len(fields) :])})
    return jobs


def processes_with(*needles: str) -> list[str]:
    """Live processes whose command line holds every needle (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and all(n in cmdline for n in needles):
            found.append(f"{entry.name} {cmdline}")
    return found
