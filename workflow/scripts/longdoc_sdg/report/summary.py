"""The closing summary of a run: what every stage made, what failed and why, what was exported,
where the report and the export are, and the next command to run.

The `summary` rule writes it (`{results}/summary.json`) from the run statistics once everything
else is done; the Snakefile's onsuccess prints it with `render_text` and applies the yield floor
(a run setting, read from the current config every time, never a rerun trigger).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..config import demo_source
from ..io import get_logger

log = get_logger("report.summary")

TOP_REASONS = 3


def build_summary(stats: dict, plan: dict, ledger: dict | None = None) -> dict:
    """The summary from `stats.json` and what the run planned.

    plan: `results` (the results folder), `demo`, `skipped` ([{stage, why}]), `served`
    ({deployment: gpus}), `export` (paths of the export folders, or {} when nothing was exported),
    `report` (whether figures were drawn). ledger: the serving ledger (GPU time per served
    deployment), when the run served models."""
    tables = stats["tables"]
    reasons: dict[str, list[list]] = defaultdict(list)
    for row in tables["failure_reasons"]:
        reasons[row["stage"]].append([row["reason"], row["rows"]])
    filtered: dict[str, dict[str, int]] = defaultdict(dict)
    for row in tables.get("filter_drops") or []:
        filtered[row["stage"]][row["filter"]] = row["rows"]
    tokens: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in tables["tokens"]:
        for key in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
            tokens[row["stage"]][key] += row[key] or 0
    stages = []
    for row in tables["stage_yield"]:
        stage = row["stage"]
        stages.append(
            {
                "stage": stage,
                "unit": row["unit"],
                "rows": row["rows"] or 0,
                "ok": row["ok"] or 0,
                "failed": row["failed"] or 0,
                "top_failure_reasons": sorted(reasons.get(stage, []), key=lambda r: (-r[1], r[0]))[:TOP_REASONS],
                "exported": row["exported"],
                # ok rows the export's filters left out, by the filter that dropped them
                "filtered": dict(filtered.get(stage, {})),
                "train": row["train"],
                "validation": row["validation"],
                "tokens": dict(tokens.get(stage, {})),
            }
        )
    totals = stats["totals"]
    token_totals = {
        key: sum(t.get(key, 0) for t in tokens.values())
        for key in ("prompt_tokens", "completion_tokens", "reasoning_tokens")
    }
    results = plan["results"]
    return {
        "results": results,
        "demo": bool(plan.get("demo")),
        "demo_source": demo_source(plan.get("demo")),
        "generated": stats.get("generated"),
        "documents": {key: totals.get(f"documents_{key}", 0) for key in ("listed", "seeded", "failed")},
        "pages": totals.get("pages", 0),
        "stages": stages,
        "skipped": list(plan.get("skipped") or []),
        "exported": dict(totals.get("exported") or {}),
        "tokens": token_totals,
        "gpus": dict(plan.get("served") or {}),
        "gpu_hours": {
            name: round(entry.get("gpu_seconds", 0.0) / 3600, 4)
            for name, entry in ((ledger or {}).get("deployments") or {}).items()
        },
        "report": {
            "stats": f"{results}/report/stats.json",
            "figures": f"{results}/report/figures/" if plan.get("report") else None,
            "html": "snakemake --report report.html",
        },
        "export": dict(plan.get("export") or {}),
        "logs": f"{results}/logs/",
    }


def below_floor(summary: dict, min_ok_rows: int) -> list[dict]:
    """Stages whose ok rows (seed: seeded documents) are under the floor."""
    return [s for s in summary["stages"] if s["ok"] < min_ok_rows]


def next_command(summary: dict, low: list[dict], profile: str = "profiles/local") -> str:
    """What to run next, given how the run went."""
    if low:
        stage = low[0]["stage"]
        if stage == "seed":
            return f"look at the seed failures in {summary['logs']}seed/ and the source settings (source.*)"
        name = stage.split("/")[-1] if stage.startswith("judge/") else stage
        return (
            f"read {summary['logs']}{'judge' if stage.startswith('judge/') else name}/*.log, fix the cause, "
            f"then: longdoc-sdg requeue {stage} --results-dir {summary['results']}"
        )
    # Stages turned off in the config need nothing; stages without a model need one.
    if any(s.get("mode") == "unavailable" for s in summary["skipped"]):
        return (
            "give the skipped stages a model: models.ALIAS.endpoint (base_url, model, api_key_env) with stages.NAME.model: ALIAS, or "
            "serving.enabled: true in a --configfile; or try the whole pipeline on the samples: longdoc-sdg demo"
        )
    if summary["demo"]:
        return (
            f"open {summary['results']}/report.html; for real data, point models: at your endpoints "
            f"(config/README.md) and run: snakemake --profile {profile}"
        )
    return f"snakemake --profile {profile} --report report.html   (then open report.html)"


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def render_text(summary: dict, min_ok_rows: int = 1, fail_below_floor: bool = False) -> str:
    """The console form of the summary, with a loud warning for stages under the yield floor."""
    low = below_floor(summary, min_ok_rows)
    bar = "=" * 78
    # a summary.json written before demo_source existed still says `demo`
    source = demo_source(summary.get("demo_source") or summary["demo"])
    title = "longdoc-sdg run summary" + ("  [DEMO DATA: not for training]" if source else "")
    docs = summary["documents"]
    labels = [f"{s['stage']} ({s['unit']})" for s in summary["stages"]]
    labels += [f"{s['stage']} (skipped)" for s in summary["skipped"]]
    width = max([24, *map(len, labels)]) + 2
    lines = [
        bar,
        title,
        bar,
        (
            f"documents: {docs['listed']:,} listed, {docs['seeded']:,} seeded, {docs['failed']:,} failed; "
            f"{summary['pages']:,} pages"
        ),
        f"{'stage':<{width}}{'in':>8}{'ok':>8}{'failed':>8}{'exported':>10}  top failure reasons",
    ]
    for s in summary["stages"]:
        reasons = ", ".join(f"{r} {n:,}" for r, n in s["top_failure_reasons"]) or "-"
        lines.append(
            f"{s['stage'] + ' (' + s['unit'] + ')':<{width}}{s['rows']:>8,}{s['ok']:>8,}{s['failed']:>8,}"
            f"{_count(s['exported']):>10}  {reasons}"
        )
    for skipped in summary["skipped"]:
        lines.append(f"{skipped['stage'] + ' (skipped)':<{width}}{skipped['why']}")
    tokens = summary["tokens"]
    if any(tokens.values()):
        lines.append(
            f"tokens: {tokens['prompt_tokens']:,} prompt, {tokens['completion_tokens']:,} completion "
            f"({tokens['reasoning_tokens']:,} reasoning)"
        )
    if summary["gpus"]:
        hours = summary.get("gpu_hours") or {}
        lines.append(
            "served deployments: "
            + ", ".join(
                f"{d} {g} GPU(s)" + (f", {hours[d]:g} GPU-hours" if d in hours else "")
                for d, g in summary["gpus"].items()
            )
        )
    if summary["exported"]:
        lines.append("QA pairs exported: " + ", ".join(f"{s} {n:,}" for s, n in summary["exported"].items()))
    filtered = [s for s in summary["stages"] if s.get("filtered")]
    if filtered:
        lines.append(
            "dropped by the export filters: "
            + "; ".join(f"{s['stage']} " + ", ".join(f"{f} {n:,}" for f, n in s["filtered"].items()) for s in filtered)
        )
    if summary["export"]:
        lines.append("export: " + ", ".join(f"{k} {v}" for k, v in summary["export"].items()))
    else:
        lines.append("export: nothing exported (no QA stage ran)")
    report = summary["report"]
    lines.append(
        f"report: {report['figures'] or 'figures off (report.enabled: false)'}; statistics {report['stats']}; "
        f"HTML report: {report['html']}"
    )
    if low:
        lines += [
            "",
            "!" * 78,
            (
                f"WARNING: {len(low)} stage(s) below the yield floor of {min_ok_rows} ok row(s) (summary.run.min_ok_rows):"
            ),
        ]
        for s in low:
            lines.append(
                f"  {s['stage']}: {s['ok']:,} ok of {s['rows']:,}"
                + (
                    f"; failures: {', '.join(r for r, _ in s['top_failure_reasons'])}"
                    if s["top_failure_reasons"]
                    else ""
                )
            )
        lines.append(
            "  the run fails (summary.run.fail_below_floor: true)"
            if fail_below_floor
            else "  set summary.run.fail_below_floor: true to make such a run fail"
        )
        lines.append("!" * 78)
    if source:
        lines.append(f"DEMO DATA: the answers come from {source}.")
    lines += [f"next: {next_command(summary, low)}", bar]
    return "\n".join(lines)


def write_summary_json(path: str | Path, summary: dict) -> None:
    from ..export.common import write_json_atomic

    write_json_atomic(path, summary)
    log.info("summary: %s", json.dumps({s["stage"]: [s["rows"], s["ok"]] for s in summary["stages"]}))


def load_summary(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
