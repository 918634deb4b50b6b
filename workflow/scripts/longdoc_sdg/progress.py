"""Whole-run progress on the console: after each seed or stage job, one line with the shards of
that stage done in this run, its rows per second, and the run's jobs done with an ETA.

The Snakefile's onstart records the plan (jobs per rule, start time) in
`{results}/logs/progress/plan.json`, counted from the workflow's own plan (each job whose
outputs are not all there yet; Snakemake's DAG is not public API); each job appends one line
to `done.jsonl` there and prints the status to the console (the job's original stderr: with
the local executor, the terminal; under Slurm, the job's own log). Steering only: nothing here is an input or output of a rule.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .io import write_text_atomic


def progress_dir(results: str) -> Path:
    return Path(results) / "logs" / "progress"


def record_plan(results: str, planned: dict[str, int]) -> None:
    """Start a run's progress: the jobs it will run per rule."""
    folder = progress_dir(results)
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done.jsonl"
    if done.exists():
        done.unlink()
    write_text_atomic(folder / "plan.json", json.dumps({"started": time.time(), "planned": planned}) + "\n")


def missing_jobs(jobs: dict[str, list[list[str]]]) -> dict[str, int]:
    """Per rule, how many of its jobs (each given by its output paths) still have an output
    missing: what a run from here has to do. A run that also redoes finished jobs (changed
    settings, --forcerun) or only asks for some targets counts as it goes (status_line)."""
    return {
        rule: sum(1 for outputs in of_rule if not all(os.path.exists(p) for p in outputs))
        for rule, of_rule in jobs.items()
    }


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_line(plan: dict, done: list[dict], now: float, last: dict) -> str:
    rule = last["rule"]
    of_rule = [d for d in done if d["rule"] == rule]
    rows = sum(d["rows"] for d in of_rule)
    busy = sum(d["seconds"] for d in of_rule)
    planned = plan["planned"]
    finished = len(done)
    # Jobs redone although their outputs existed were not counted up front: never show more
    # done than planned.
    of_rule_planned = max(planned.get(rule, 0), len(of_rule))
    total = max(sum(planned.values()), finished)
    elapsed = now - plan["started"]
    eta = elapsed / finished * (total - finished) if finished and total > finished else 0.0
    rate = f", {rows / busy:.1f} {last['unit']}/s per job" if busy > 0 else ""
    return (
        f"[progress] {rule} {last['shard']} done: {rule} {len(of_rule)}/{of_rule_planned} "
        f"shard(s), {rows:,} {last['unit']}{rate}; run {finished}/{total} tracked jobs, "
        f"elapsed {_duration(elapsed)}, ETA {_duration(eta) if total > finished else '-'}"
    )


def output_rows(paths) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(path).num_rows for path in paths)


def report_job(results: str, rule: str, shard: str, rows: int, seconds: float, unit: str = "rows") -> str | None:
    """Record a finished job and print the run's status line; None when no plan was recorded
    (a job run outside a `snakemake` run, e.g. `longdoc-sdg stage`)."""
    folder = progress_dir(results)
    plan_path = folder / "plan.json"
    if not plan_path.is_file():
        return None
    entry = {"rule": rule, "shard": shard, "rows": int(rows), "seconds": round(float(seconds), 3), "unit": unit}
    # One short line per job, appended in one write: concurrent jobs do not interleave.
    fd = os.open(folder / "done.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    done = [json.loads(line) for line in (folder / "done.jsonl").read_text(encoding="utf-8").splitlines() if line]
    line = status_line(plan, done, time.time(), entry)
    print(line, file=sys.__stderr__, flush=True)
    return line
