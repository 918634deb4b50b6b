"""Running snakemake on a workflow directory and reading its dry-run plan (no tests here)."""

from __future__ import annotations

import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from conftest import REPO


def snakemake_cmd(
    workdir: Path, *args: str, configfile: Path | None = None, profile: str | None = None, cores: int | None = 2
) -> list[str]:
    """Our Snakefile on WORKDIR with its config.yaml (or CONFIGFILE), under profiles/PROFILE when
    given; ARGS last (--directory ends --configfile's list, so targets stay targets)."""
    cmd = ["snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]
    cmd += ["--configfile", str(configfile or workdir / "config.yaml"), "--directory", str(workdir)]
    if profile:
        cmd += ["--profile", str(REPO / "profiles" / profile)]
    if cores:
        cmd += ["--cores", str(cores)]
    return cmd + list(args)


def run_until(cmd: list[str], deadline: int, **kwargs) -> subprocess.CompletedProcess:
    """CMD (a snakemake command), sent SIGINT after DEADLINE seconds as on Ctrl-C, so snakemake
    cancels its Slurm jobs and stops its servers instead of leaving them behind (a hang guard,
    not a timing check)."""
    return subprocess.run(
        ["timeout", "-s", "INT", "-k", "60", str(deadline), *cmd],
        capture_output=True,
        text=True,
        timeout=deadline + 200,
        # A background parent may ignore SIGINT, and its children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def run_snakemake(workdir: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule name -> count."""
    jobs, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("-"):
                continue
            jobs[parts[0]] = int(parts[1])
    return jobs


def two_at_a_time(calls: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Each named call's result, two running at once: a snakemake parse is seconds of one core,
    and dry runs take no lock and write nothing, so independent ones can overlap."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}
