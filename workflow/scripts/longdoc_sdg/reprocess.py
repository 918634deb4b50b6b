"""Rerun only the failed rows of finished model-stage shards (`longdoc-sdg requeue`).

Snakemake deletes a job's output before it reruns the job, so the good rows of a shard must be
parked somewhere the job will find them: the shard's resume journal. `requeue` rebuilds that
journal from the finished parquet (every row except the requeued failures), under the config
hash the shard was made with (kept in the parquet's schema metadata), then removes the parquet.
`snakemake --forcerun SHARD...` then resumes the job from the journal: only the requeued rows are
requested, the kept rows come back unchanged, and downstream jobs rerun because their input
changed. If the stage's settings changed in between, the hash no longer matches, the journal is
discarded and the shard is redone whole (stale rows are never reused).

    longdoc-sdg requeue results/classify/00003.parquet --reasons length,schema_invalid
    longdoc-sdg requeue classify judge/text_qa --results-dir results
    snakemake --profile profiles/local --forcerun results/classify/00003.parquet ...
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterator

import pyarrow.parquet as pq

from .engine.errors import INFRA_REASONS
from .io import get_logger
from .registry import get_spec, model_stages, qa_stages
from .rowstore import shard_provenance, write_journal

log = get_logger("reprocess")

HELP = "requeue failed rows of finished stage shards so a forced rerun redoes only those rows"

# Shard outputs are {stage}/{5 digits}.parquet (ids.py); anything else in a stage dir is not one.
SHARD_GLOB = "[0-9][0-9][0-9][0-9][0-9].parquet"


class RequeueError(Exception):
    """A target cannot be requeued (not a shard, no provenance, ...)."""


@dataclass
class RequeueResult:
    output: Path
    journal: Path
    rows: int = 0
    requeued: collections.Counter = field(default_factory=collections.Counter)
    kept_failures: collections.Counter = field(default_factory=collections.Counter)
    changed: bool = False  # journal written and output removed

    @property
    def kept(self) -> int:
        return self.rows - sum(self.requeued.values())

    def describe(self) -> str:
        def counts(c: collections.Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))

        text = f"{self.output}: {self.rows} rows, requeued {sum(self.requeued.values())}"
        if self.requeued:
            text += f" ({counts(self.requeued)})"
        text += f", kept {self.kept}"
        if self.kept_failures:
            text += f" (failed: {counts(self.kept_failures)})"
        return text


def requeue_shard(
    output_path: str | os.PathLike, reasons: Collection[str] | None = None, dry_run: bool = False
) -> RequeueResult:
    """Turn one finished shard back into a journal without its failed rows of `reasons`
    (None: every failed row) and remove the shard. Nothing changes when no row matches."""
    output = Path(output_path)
    if not output.is_file():
        raise RequeueError(f"{output}: no such shard (already requeued, or never finished)")
    try:
        provenance = shard_provenance(output)
    except Exception as exc:  # not parquet at all
        raise RequeueError(f"{output}: not a readable parquet file ({exc})") from None
    if provenance is None:
        raise RequeueError(
            f"{output}: carries no journal provenance (not a model-stage shard, or written by an "
            f"older version); rerun it whole with `snakemake --forcerun {output}`"
        )
    wanted = None if reasons is None else set(reasons)
    result = RequeueResult(output, provenance["journal_path"])

    def requeue(row: dict) -> bool:
        return row["status"] == "failed" and (wanted is None or row["failure_reason"] in wanted)

    # a first pass counts (cheap: two columns); rows are only streamed when something changes
    table = pq.read_table(output, columns=["status", "failure_reason"])
    for row in table.to_pylist():
        result.rows += 1
        if requeue(row):
            result.requeued[row["failure_reason"]] += 1
        elif row["status"] == "failed":
            result.kept_failures[row["failure_reason"]] += 1
    if not result.requeued or dry_run:
        return result

    def kept_rows() -> Iterator[dict]:
        # batch by batch: a shard is never held whole in memory
        for batch in pq.ParquetFile(output).iter_batches(batch_size=2000):
            for row in batch.to_pylist():
                if not requeue(row):
                    yield row

    if result.journal.exists():
        log.warning("%s: replacing the existing journal %s", output, result.journal)
    # journal first, then the output: a crash in between leaves the shard intact
    write_journal(result.journal, provenance["header"], kept_rows())
    output.unlink()
    result.changed = True
    return result


def shard_paths(targets: list[str], results_dir: str | os.PathLike) -> list[Path]:
    """Shard files named by `targets`: a shard parquet path, or a stage (`classify`,
    `judge/text_qa`, `judge` for every judged stage) meaning all its shards under results_dir."""
    results = Path(results_dir)
    per_qa = {s for s in model_stages() if get_spec(s).per_qa_stage}
    stage_dirs = {s for s in model_stages() if s not in per_qa} | {f"{j}/{q}" for j in per_qa for q in qa_stages()}
    paths: list[Path] = []
    for target in targets:
        if target.endswith(".parquet"):
            paths.append(Path(target))
            continue
        name = target.strip("/")
        if name in per_qa:
            dirs = [results / name / s for s in qa_stages()]
        elif name in stage_dirs:
            dirs = [results / name]
        else:
            raise RequeueError(
                f"{target!r} is neither a shard parquet nor a stage; stages: {', '.join(sorted(stage_dirs | per_qa))}"
            )
        found = sorted(p for d in dirs if d.is_dir() for p in d.glob(SHARD_GLOB))
        if not found:
            raise RequeueError(f"stage {name}: no finished shards under {results}")
        paths.extend(found)
    # the same shard named twice (a stage and one of its files) is requeued once
    return list(dict.fromkeys(paths))


# ---------------------------------------------------------------------------------------------
# `longdoc-sdg requeue`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Requeue failed rows: rebuild each shard's resume journal from its good rows (and the "
        "failures not selected), then remove the shard. Then run `snakemake --forcerun SHARD...` "
        "(printed at the end): only the requeued rows are requested again."
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="a shard (results/classify/00003.parquet) or a stage (classify, "
        "judge/text_qa, judge) for all its shards under --results-dir",
    )
    parser.add_argument(
        "--results-dir", default="results", help="the workflow's results_dir, for stage targets (default: results)"
    )
    parser.add_argument(
        "--reasons", default=None, help="comma-separated failure reasons to requeue (default: every failed row)"
    )
    parser.add_argument("--dry-run", "-n", action="store_true", help="report what would be requeued; change nothing")


def run_command(args: argparse.Namespace) -> int:
    reasons = None
    if args.reasons is not None:
        reasons = {r.strip() for r in args.reasons.split(",") if r.strip()}
        if not reasons:
            print("error: --reasons is empty", file=sys.stderr)
            return 2
    try:
        paths = shard_paths(args.targets, args.results_dir)
    except RequeueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: list[RequeueResult] = []
    errors = 0
    for path in paths:
        try:
            result = requeue_shard(path, reasons, dry_run=args.dry_run)
        except RequeueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            errors += 1
            continue
        results.append(result)
        print(result.describe())
    selected = [r for r in results if r.requeued]
    infra_kept = sum(n for r in results for k, n in r.kept_failures.items() if k in INFRA_REASONS)
    if infra_kept:
        # run_rows always retries these on resume, whatever --reasons says
        print(
            f"note: {infra_kept} kept rows failed with an infrastructure reason "
            f"({', '.join(INFRA_REASONS)}); a resumed shard retries those too"
        )
    if not selected:
        print("nothing to requeue")
    elif args.dry_run:
        print(
            f"dry run: would requeue {sum(sum(r.requeued.values()) for r in selected)} rows in {len(selected)} shard(s)"
        )
    else:
        files = " ".join(str(r.output) for r in selected)
        print(
            f"requeued {sum(sum(r.requeued.values()) for r in selected)} rows in {len(selected)} shard(s); "
            f"now run (with your usual options, from the workflow directory):\n"
            f"  snakemake --forcerun {files}"
        )
    return 2 if errors else 0
