"""Run statistics with DuckDB across all stages and shards: one small table per view of the run,
written as parquet (`{results}/report/stats/{table}.parquet`) and together as `stats.json`.

Only metadata columns are read (DuckDB projects columns), never page images.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from ..export.common import (
    answer_format_sql,
    columns_of,
    duckdb_connection,
    query_table,
    read_parquet,
    sql_str,
    write_json_atomic,
)
from ..io import atomic_path, get_logger
from ..registry import get_spec, judge_stage, model_stages, qa_stages
from .benchmark import CATEGORY_TO_SOURCE

log = get_logger("report.stats")

STATS_TABLES = (
    "stage_yield",
    "failure_reasons",
    "filter_drops",
    "question_types",
    "answer_formats",
    "evidence_pages",
    "judge_scores",
    "judge_rubric",
    "quality_scores",
    "tokens",
    "page_classes",
    "page_sources",
    "text_layers",
    "verify_agreement",
    "image_resolution",
)
RUBRIC = ("answer_correctness", "training_signal_strength", "question_quality", "visual_grounding", "format_compliance")

SCHEMAS = {
    "image_resolution": [
        ("stage", pa.string()),
        ("rows", pa.int64()),
        ("rows_with_images", pa.int64()),
        ("downscaled_rows", pa.int64()),
        ("context_too_long", pa.int64()),
        ("median_image_pixels", pa.int64()),
        ("min_image_pixels", pa.int64()),
        ("mean_image_scale", pa.float64()),
        ("min_image_scale", pa.float64()),
        ("max_est_prompt_tokens", pa.int64()),
    ],
    "verify_agreement": [
        ("stage", pa.string()),
        ("question_type", pa.string()),
        ("benchmark_format", pa.string()),
        ("verified_rows", pa.int64()),
        ("agreeing_rows", pa.int64()),
        ("mean_verify_score", pa.float64()),
    ],
    "stage_yield": [
        ("stage", pa.string()),
        ("unit", pa.string()),
        ("rows", pa.int64()),
        ("ok", pa.int64()),
        ("failed", pa.int64()),
        ("exported", pa.int64()),
        ("train", pa.int64()),
        ("validation", pa.int64()),
    ],
    "failure_reasons": [("stage", pa.string()), ("reason", pa.string()), ("rows", pa.int64())],
    "filter_drops": [("stage", pa.string()), ("filter", pa.string()), ("rows", pa.int64())],
    "question_types": [
        ("stage", pa.string()),
        ("question_type", pa.string()),
        ("ok_rows", pa.int64()),
        ("exported_rows", pa.int64()),
    ],
    "answer_formats": [
        ("stage", pa.string()),
        ("answer_format", pa.string()),
        ("ok_rows", pa.int64()),
        ("exported_rows", pa.int64()),
    ],
    "evidence_pages": [
        ("stage", pa.string()),
        ("num_evidence_pages", pa.int64()),
        ("evidence_kind", pa.string()),
        ("ok_rows", pa.int64()),
        ("exported_rows", pa.int64()),
    ],
    "judge_scores": [
        ("stage", pa.string()),
        ("score", pa.float64()),
        ("rows", pa.int64()),
        ("exported_rows", pa.int64()),
    ],
    "judge_rubric": [("stage", pa.string()), ("criterion", pa.string()), ("score", pa.int64()), ("rows", pa.int64())],
    "quality_scores": [
        ("stage", pa.string()),
        ("quality_score", pa.int64()),
        ("ok_rows", pa.int64()),
        ("exported_rows", pa.int64()),
    ],
    "tokens": [
        ("stage", pa.string()),
        ("model", pa.string()),
        ("rows", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
    ],
    "page_classes": [
        ("category", pa.string()),
        ("evidence_source", pa.string()),
        ("pages", pa.int64()),
        ("primary_pages", pa.int64()),
        ("share", pa.float64()),
    ],
    "page_sources": [("evidence_source", pa.string()), ("pages", pa.int64()), ("share", pa.float64())],
    "text_layers": [
        ("text_layer", pa.string()),
        ("ocr_engine", pa.string()),
        ("pages", pa.int64()),
        ("with_text", pa.int64()),
    ],
}


def _group_judge(files: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for f in files:
        out[Path(f).parent.name].append(f)
    return dict(out)


def _by_stage(files: list[str]) -> dict[str, str]:
    """Export datasets / summaries by stage name (`.../{stage}.parquet`, `.../{stage}.summary.json`)."""
    return {Path(f).name.split(".")[0]: f for f in files}


class _Tables:
    def __init__(self):
        self.rows: dict[str, list[dict]] = {name: [] for name in STATS_TABLES}

    def add(self, name: str, rows):
        keys = [k for k, _ in SCHEMAS[name]]
        for row in rows:
            self.rows[name].append({k: row.get(k) for k in keys})

    def table(self, name: str) -> pa.Table:
        return pa.Table.from_pylist(self.rows[name], schema=pa.schema(SCHEMAS[name]))


def _dicts(con, sql: str) -> list[dict]:
    return query_table(con, sql).to_pylist()


def compute_stats(
    inputs: dict[str, list[str]], params: dict | None = None, mem_mb: int | None = None, spill_dir: str | None = None
) -> dict:
    """All statistics tables as {"tables": {name: rows}, "totals": {...}}.

    inputs: `manifest`, `documents`, `failures`, `pages` (seed shards), one key per model stage
    with its shards, `judge` (all judge shards, `.../judge/{qa_stage}/{shard}.parquet`),
    `export_datasets` and `export_summaries`.
    """
    params = params or {}
    t = _Tables()
    totals: dict = {}
    judge_files = _group_judge(list(inputs.get("judge") or []))
    verify_files = _group_judge(list(inputs.get("verify") or []))
    datasets = _by_stage(list(inputs.get("export_datasets") or []))
    summaries = {
        s: json.loads(Path(p).read_text()) for s, p in _by_stage(list(inputs.get("export_summaries") or [])).items()
    }

    with duckdb_connection(mem_mb, spill_dir) as con:

        def count(files, where="true") -> int:
            if not files:
                return 0
            return con.execute(f"SELECT count(*) FROM {read_parquet(files)} WHERE {where}").fetchall()[0][0]

        # Seed: documents listed, seeded, failed; pages rendered.
        manifest, documents = list(inputs.get("manifest") or []), list(inputs.get("documents") or [])
        failures, pages = list(inputs.get("failures") or []), list(inputs.get("pages") or [])
        listed, seeded, failed = count(manifest), count(documents), count(failures)
        totals.update(documents_listed=listed, documents_seeded=seeded, documents_failed=failed, pages=count(pages))
        if manifest or documents:
            t.add(
                "stage_yield", [{"stage": "seed", "unit": "documents", "rows": listed, "ok": seeded, "failed": failed}]
            )
        if failures:
            t.add(
                "failure_reasons",
                [
                    dict(r, stage="seed")
                    for r in _dicts(
                        con,
                        f"SELECT reason, count(*) AS rows FROM {read_parquet(failures)} GROUP BY 1 ORDER BY 2 DESC, 1",
                    )
                ],
            )

        # Model stages and the judge: yield, failure reasons, tokens.
        stage_files = {
            s: list(inputs.get(s) or []) for s in model_stages() if inputs.get(s) and not get_spec(s).per_qa_stage
        }
        stage_files.update({f"{judge_stage()}/{qa}": files for qa, files in judge_files.items()})
        for stage, files in stage_files.items():
            src = read_parquet(files)
            row = _dicts(
                con,
                f"""SELECT count(*) AS rows, count(*) FILTER (WHERE status = 'ok') AS ok,
                count(*) FILTER (WHERE status <> 'ok') AS failed FROM {src}""",
            )[0]
            summary = summaries.get(stage)
            if summary:
                row.update(
                    exported=summary["kept"],
                    train=summary["splits"]["train"],
                    validation=summary["splits"]["validation"],
                )
            t.add("stage_yield", [dict(row, stage=stage, unit="rows")])
            t.add(
                "failure_reasons",
                [
                    dict(r, stage=stage)
                    for r in _dicts(
                        con,
                        f"""SELECT
                coalesce(failure_reason, 'unknown') AS reason, count(*) AS rows FROM {src}
                WHERE status <> 'ok' GROUP BY 1 ORDER BY 2 DESC, 1""",
                    )
                ],
            )
            t.add(
                "tokens",
                [
                    dict(r, stage=stage)
                    for r in _dicts(
                        con,
                        f"""SELECT coalesce(model, '?') AS model,
                count(*) AS rows, coalesce(sum(prompt_tokens), 0)::BIGINT AS prompt_tokens,
                coalesce(sum(completion_tokens), 0)::BIGINT AS completion_tokens,
                coalesce(sum(reasoning_tokens), 0)::BIGINT AS reasoning_tokens
                FROM {src} GROUP BY 1 ORDER BY 1""",
                    )
                ],
            )

            # The resolution the stage's images were sent at (shards of older runs lack the columns).
            if "image_scale" in columns_of(con, src):
                t.add(
                    "image_resolution",
                    [
                        dict(r, stage=stage)
                        for r in _dicts(
                            con,
                            f"""SELECT count(*) AS rows,
                    count(*) FILTER (WHERE image_count > 0) AS rows_with_images,
                    count(*) FILTER (WHERE image_scale < 1) AS downscaled_rows,
                    count(*) FILTER (WHERE failure_reason = 'context_too_long') AS context_too_long,
                    median(image_pixels)::BIGINT AS median_image_pixels, min(image_pixels) AS min_image_pixels,
                    round(avg(image_scale), 4) AS mean_image_scale, min(image_scale) AS min_image_scale,
                    max(est_prompt_tokens) AS max_est_prompt_tokens FROM {src}""",
                        )
                    ],
                )

        # Pages without a text layer (scans), and which OCR engine read each kind of page.
        if "ocr" in stage_files and "text_layer" in columns_of(con, read_parquet(stage_files["ocr"])):
            layers = _dicts(
                con,
                f"""SELECT text_layer, coalesce(ocr_engine, '?') AS ocr_engine, count(*) AS pages,
                count(*) FILTER (WHERE length(trim(coalesce(transcribed_texts, ''))) > 0) AS with_text
                FROM {read_parquet(stage_files["ocr"])} WHERE status = 'ok' GROUP BY 1, 2 ORDER BY 1, 2""",
            )
            t.add("text_layers", layers)
            totals["pages_without_text_layer"] = sum(r["pages"] for r in layers if r["text_layer"] == "none")

        for stage, summary in summaries.items():
            t.add(
                "filter_drops",
                [
                    {"stage": stage, "filter": k, "rows": v}
                    for k, v in summary["dropped"].items()
                    if v and k != "failed"
                ],
            )

        # QA mixes: the ok rows of each QA stage next to the exported (final) rows.
        for stage in [s for s in qa_stages() if s in stage_files]:
            src = read_parquet(stage_files[stage])
            cols = set(columns_of(con, src))
            exported = read_parquet([datasets[stage]]) if stage in datasets else None
            evidence_ok_rows = (
                "coalesce(json_array_length(evidence_pages), 0)"
                if "evidence_pages" in cols
                else "coalesce(len(pages), 0)"
            )

            def mix(key: str, ok_expr: str, exp_expr: str, extra_ok: str = "") -> list[dict]:
                exp_part = (
                    f"SELECT {exp_expr} AS k, count(*) AS n FROM {exported} GROUP BY 1"
                    if exported
                    else "SELECT NULL AS k, 0 AS n WHERE false"
                )
                return _dicts(
                    con,
                    f"""WITH ok AS (SELECT {ok_expr} AS k, count(*) AS n FROM {src}
                        WHERE status = 'ok' {extra_ok} GROUP BY 1),
                    ex AS ({exp_part})
                    SELECT coalesce(ok.k, ex.k) AS {key}, coalesce(ok.n, 0) AS ok_rows, coalesce(ex.n, 0) AS exported_rows
                    FROM ok FULL OUTER JOIN ex ON ok.k IS NOT DISTINCT FROM ex.k ORDER BY 2 DESC, 1""",
                )

            formats = answer_format_sql("answer", "question_type" if "question_type" in cols else None)
            t.add(
                "question_types", [dict(r, stage=stage) for r in mix("question_type", "question_type", "question_type")]
            )
            t.add(
                "answer_formats",
                [dict(r, stage=stage) for r in mix("answer_format", formats, "answer_format")],
            )
            ev = mix(
                "ev",
                f"{evidence_ok_rows} || '|' || ({formats} = 'None')",
                "num_evidence_pages || '|' || (answer_format = 'None')",
            )
            rows = []
            for r in ev:
                n, unanswerable = r["ev"].split("|")
                kind = "unanswerable" if unanswerable == "true" else ("cross-page" if int(n) >= 2 else "single-page")
                rows.append(
                    {
                        "stage": stage,
                        "num_evidence_pages": int(n),
                        "evidence_kind": kind,
                        "ok_rows": r["ok_rows"],
                        "exported_rows": r["exported_rows"],
                    }
                )
            t.add("evidence_pages", sorted(rows, key=lambda r: (r["num_evidence_pages"], r["evidence_kind"])))
            if "quality_score" in cols and get_spec(stage).question_types == "anchored":
                t.add(
                    "quality_scores",
                    [dict(r, stage=stage) for r in mix("quality_score", "quality_score", "quality_score")],
                )

        # The judge: weighted scores and rubric scores over its ok rows.
        for qa, files in judge_files.items():
            src = read_parquet(files)
            exported = read_parquet([datasets[qa]]) if qa in datasets else None
            exp_join = (
                (
                    f"LEFT JOIN (SELECT round(weighted_quality_score, 2) AS score, count(*) AS n FROM {exported} "
                    "GROUP BY 1) ex USING (score)"
                )
                if exported
                else ""
            )
            t.add(
                "judge_scores",
                [
                    dict(r, stage=qa)
                    for r in _dicts(
                        con,
                        f"""SELECT s.score, s.rows,
                {"coalesce(ex.n, 0)" if exported else "0"} AS exported_rows FROM
                (SELECT round(weighted_quality_score, 2) AS score, count(*) AS rows FROM {src}
                 WHERE status = 'ok' GROUP BY 1) s {exp_join} ORDER BY 1""",
                    )
                ],
            )
            union = " UNION ALL ".join(
                f"SELECT '{c}' AS criterion, {c}_score AS score FROM {src} WHERE status = 'ok'" for c in RUBRIC
            )
            t.add(
                "judge_rubric",
                [
                    dict(r, stage=qa)
                    for r in _dicts(
                        con,
                        f"""SELECT criterion, score::BIGINT AS score,
                count(*) AS rows FROM ({union}) GROUP BY 1, 2 ORDER BY 1, 2""",
                    )
                ],
            )

        # Verify: how often the independent answer agrees with the generated one, per question
        # type; agreeing = at least the export's min_verify_score of the format (1.0 where unset).
        thresholds = params.get("min_verify_score") or {}
        threshold = (
            "CASE benchmark_format "
            + " ".join(f"WHEN {sql_str(fmt)} THEN {float(v)!r}" for fmt, v in sorted(thresholds.items()))
            + " ELSE 1.0 END"
        )
        for qa, files in verify_files.items():
            t.add(
                "verify_agreement",
                [
                    dict(r, stage=qa)
                    for r in _dicts(
                        con,
                        f"""SELECT question_type, benchmark_format, count(*) AS verified_rows,
                        count(*) FILTER (WHERE verify_score >= {threshold}) AS agreeing_rows,
                        avg(verify_score) AS mean_verify_score
                        FROM {read_parquet(files)} WHERE status = 'ok' GROUP BY 1, 2 ORDER BY 1, 2""",
                    )
                ],
            )

        # Page classes (stage 04): how many pages list each primary category.
        if "classify" in stage_files:
            src = read_parquet(stage_files["classify"])
            classified = count(stage_files["classify"], "status = 'ok'")
            totals["pages_classified"] = classified
            rows = _dicts(
                con,
                f"""WITH c AS (SELECT from_json(primary_categories, '["VARCHAR"]') AS cats
                    FROM {src} WHERE status = 'ok')
                SELECT cat AS category, count(*) AS pages,
                       count(*) FILTER (WHERE pos = 1) AS primary_pages
                FROM (SELECT unnest(cats) AS cat, unnest(generate_series(1, len(cats))) AS pos FROM c)
                GROUP BY 1 ORDER BY 2 DESC, 1""",
            )
            for r in rows:
                r["evidence_source"] = CATEGORY_TO_SOURCE.get(r["category"], "figure/image")
                r["share"] = round(r["pages"] / classified, 4) if classified else None
            t.add("page_classes", rows)
            # A page counts once per evidence source its classes map to (several figure classes = one).
            mapping = " ".join(f"WHEN {sql_str(c)} THEN {sql_str(s)}" for c, s in CATEGORY_TO_SOURCE.items())
            sources = _dicts(
                con,
                f"""WITH c AS (SELECT row_id, unnest(from_json(primary_categories, '["VARCHAR"]')) AS cat
                    FROM {src} WHERE status = 'ok')
                SELECT CASE cat {mapping} ELSE 'figure/image' END AS evidence_source, count(DISTINCT row_id) AS pages
                FROM c GROUP BY 1 ORDER BY 2 DESC, 1""",
            )
            for r in sources:
                r["share"] = round(r["pages"] / classified, 4) if classified else None
            t.add("page_sources", sources)

    totals["exported"] = {s: summaries[s]["kept"] for s in summaries}
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": params,
        "totals": totals,
        "tables": t.rows,
        "_arrow": {name: t.table(name) for name in STATS_TABLES},
    }


def write_stats(
    inputs: dict[str, list[str]],
    json_path: str,
    table_paths: dict[str, str],
    params: dict | None = None,
    mem_mb: int | None = None,
) -> dict:
    import pyarrow.parquet as pq

    stats = compute_stats(inputs, params, mem_mb, spill_dir=str(Path(json_path).resolve().parent))
    arrow = stats.pop("_arrow")
    for name, path in table_paths.items():
        with atomic_path(path) as tmp:
            pq.write_table(arrow[name], tmp)
    write_json_atomic(json_path, stats)
    log.info("stats: %s", {name: len(rows) for name, rows in stats["tables"].items()})
    return stats
