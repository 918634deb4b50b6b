"""The serving ledger: what each served deployment cost (replica-seconds and GPU-seconds from
ready to stop, requests and tokens it served) and what that bought per stage (GPU-hours per
1,000 accepted rows).

Inputs: `{serve_dir}/ledger.jsonl`, one line per deployment instance written by serve teardown
(longdoc_sdg.serve.core), and the served stages' shard outputs (rows with status ok are
accepted; their token columns split a deployment's GPU time among the stages it served).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens")


def read_entries(ledger_file: str | Path) -> list[dict[str, Any]]:
    path = Path(ledger_file)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed run: the others still count
    return entries


def _stage_rows(paths: list[str]) -> dict[str, int]:
    accepted = rows = tokens = 0
    for path in paths:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in ("status", *TOKEN_COLUMNS) if c in names])
        rows += table.num_rows
        if "status" in table.column_names:
            accepted += sum(1 for s in table.column("status").to_pylist() if s == "ok")
        for column in TOKEN_COLUMNS:
            if column in table.column_names:
                tokens += sum(v or 0 for v in table.column(column).to_pylist())
    return {"rows": rows, "accepted_rows": accepted, "tokens": tokens}


def build_ledger(ledger_file: str | Path, stage_files: dict[str, list[str]], stage_deployments: dict[str, str]) -> dict:
    """{deployments: {name: totals}, stages: {stage: ...}}; a deployment's GPU-seconds go to
    its stages in proportion to their tokens (rows when no tokens were counted)."""
    deployments: dict[str, dict[str, Any]] = {}
    for entry in read_entries(ledger_file):
        name = entry["deployment"]
        totals = deployments.setdefault(
            name,
            {
                "instances": 0,
                "replicas_ready": 0,
                "replica_seconds": 0.0,
                "gpu_seconds": 0.0,
                "requests": 0,
                "prompt_tokens": 0,
                "generation_tokens": 0,
            },
        )
        totals["instances"] += 1
        totals["replicas_ready"] += entry.get("replicas_ready", 0)
        for key in ("replica_seconds", "gpu_seconds", "requests", "prompt_tokens", "generation_tokens"):
            totals[key] += entry.get(key) or 0
    stages: dict[str, dict[str, Any]] = {}
    for stage, paths in stage_files.items():
        stages[stage] = {"deployment": stage_deployments[stage], **_stage_rows(paths)}
    for name, totals in deployments.items():
        served = [s for s, row in stages.items() if row["deployment"] == name]
        weight_key = "tokens" if sum(stages[s]["tokens"] for s in served) > 0 else "rows"
        weight_total = sum(stages[s][weight_key] for s in served)
        for stage in served:
            share = stages[stage][weight_key] / weight_total if weight_total else 1 / len(served)
            stages[stage]["gpu_seconds"] = round(totals["gpu_seconds"] * share, 3)
    for row in stages.values():
        row.setdefault("gpu_seconds", 0.0)
        accepted = row["accepted_rows"]
        row["gpu_hours_per_1000_accepted"] = (
            round(row["gpu_seconds"] / 3600 / (accepted / 1000), 6) if accepted else None
        )
    for totals in deployments.values():
        for key in ("replica_seconds", "gpu_seconds"):
            totals[key] = round(totals[key], 3)
    return {"deployments": deployments, "stages": stages}


def ledger_figure(ledger: dict, path: str | Path) -> None:
    """Two panels: GPU-seconds per deployment, GPU-hours per 1,000 accepted rows per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = sorted(ledger["deployments"])
    left.barh(names, [ledger["deployments"][n]["gpu_seconds"] for n in names], color="#4c72b0")
    left.set_xlabel("GPU-seconds (ready to stop, all replicas)")
    left.set_title("Serving cost per deployment")
    stages = sorted(s for s, row in ledger["stages"].items() if row["gpu_hours_per_1000_accepted"] is not None)
    right.barh(stages, [ledger["stages"][s]["gpu_hours_per_1000_accepted"] for s in stages], color="#dd8452")
    right.set_xlabel("GPU-hours per 1,000 accepted rows")
    right.set_title("Cost per stage")
    if not names:
        left.text(0.5, 0.5, "no served deployment", ha="center", va="center", transform=left.transAxes)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def card_lines(ledger: dict) -> list[str]:
    """The dataset card's compute section (markdown)."""
    if not ledger.get("stages"):
        return []
    lines = [
        "## Compute",
        "",
        "GPU time of the model servers from ready to stop (every replica), split among the stages "
        "a server answered by their tokens.",
        "",
        "| stage | deployment | accepted rows | GPU-hours | GPU-hours per 1,000 accepted rows |",
        "|---|---|---:|---:|---:|",
    ]
    for stage, row in sorted(ledger["stages"].items()):
        per = row["gpu_hours_per_1000_accepted"]
        lines.append(
            f"| {stage} | {row['deployment']} | {row['accepted_rows']} | {row['gpu_seconds'] / 3600:.4f} | "
            f"{'n/a' if per is None else f'{per:.4f}'} |"
        )
    lines.append("")
    return lines
