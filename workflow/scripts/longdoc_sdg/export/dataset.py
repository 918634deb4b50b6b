"""The final dataset of one QA stage, built with DuckDB over all its shards (out of core).

Steps: join each QA row with its judge verdict, its document and (text/visual QA) its upstream
row; give every row a drop reason from the configured filters (the first that fails, in a fixed
order); drop near-identical questions within a document among the survivors; split by document.
The output holds the kept rows without images (`{results}/export/datasets/{stage}.parquet`), and
a summary JSON counts what each filter removed, the splits, documents and the models involved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from ..io import atomic_path, get_logger
from ..registry import get_spec
from .common import (
    answer_format_sql,
    columns_of,
    duckdb_connection,
    normalised_question_sql,
    read_parquet,
    sql_str,
    write_json_atomic,
)
from .split import assign_splits

log = get_logger("export.dataset")

# Filter names in the order they are checked (a row counts under the first that drops it).
DROP_ORDER = (
    "failed",
    "contaminated",
    "duplicate_document",
    "judge_missing",
    "judge_score",
    "format",
    "verify",
    "quality_score",
    "relevance",
    "correctness",
    "evidence",
    "duplicate",
)
# Columns of the QA shards the dataset leaves out (all kept rows are ok rows).
INTERNAL_COLUMNS = ("status", "failure_reason", "failure_message")
JUDGE_SCORE_COLUMNS = (
    "answer_correctness_score",
    "training_signal_strength_score",
    "question_quality_score",
    "visual_grounding_score",
    "format_compliance_score",
)


def _settings(params: dict):
    from ..config import ExportDedup, ExportFilters, ExportSplit

    return (
        ExportFilters.model_validate(params.get("filters") or {}),
        ExportDedup.model_validate(params.get("dedup") or {}),
        ExportSplit.model_validate(params.get("split") or {}),
    )


def _contaminated_questions(con, decontamination: dict | None, columns: set[str]) -> list[dict] | None:
    """Ok rows whose question overlaps a benchmark question, as a DuckDB table
    `contaminated_questions(row_id, message)`; None when no benchmark lists its questions."""
    from ..seed.decontaminate import QuestionIndex, load_config

    cfg = load_config(decontamination)
    if not cfg.enabled or "question" not in columns:
        return None
    index = QuestionIndex(cfg)
    if not index:
        return None
    hits = []
    for row_id, question in con.execute(
        "SELECT row_id, question FROM joined WHERE status = 'ok' ORDER BY row_id"
    ).fetchall():
        message = index.match(question)
        if message:
            hits.append({"row_id": row_id, "message": message})
    con.register(
        "contaminated_questions",
        pa.Table.from_pylist(hits, schema=pa.schema([("row_id", pa.string()), ("message", pa.string())])),
    )
    return hits


def _empty_stage_table(stage: str) -> pa.Table:
    from ..rowstore import output_schema
    from ..stages import get_stage
    from ..stages.base import arrow_schema

    return output_schema(arrow_schema(get_stage(stage).output_model)).empty_table()


def verify_threshold_sql(filters) -> str | None:
    """SQL: the minimum verify_score of a row's benchmark format (null: that format is not filtered)."""
    if not filters.min_verify_score:
        return None
    whens = " ".join(
        f"WHEN {sql_str(fmt)} THEN {float(value)!r}" for fmt, value in sorted(filters.min_verify_score.items())
    )
    return f"CASE verify_format {whens} END"


def filter_conditions(filters, columns: set[str], judged: bool, verified: bool = False) -> list[tuple[str, str]]:
    """(drop reason, SQL condition that drops the row) for the filters that apply to a stage."""
    conds = [("failed", "status IS DISTINCT FROM 'ok'")]
    if judged and filters.require_judge:
        conds.append(("judge_missing", "judge_status IS DISTINCT FROM 'ok'"))
    if judged and filters.min_judge_score is not None:
        conds.append(("judge_score", f"weighted_quality_score < {float(filters.min_judge_score)!r}"))
    if filters.require_format_ok and "format_ok" in columns:
        conds.append(("format", "format_ok IS NOT TRUE"))
    threshold = verify_threshold_sql(filters) if verified else None
    if threshold:
        # Rows without a verify verdict (not verified, or the verify row failed) are kept.
        conds.append(("verify", f"verify_status = 'ok' AND verify_score < {threshold}"))
    if filters.min_quality_score is not None and "quality_score" in columns:
        conds.append(("quality_score", f"coalesce(quality_score, -1) < {int(filters.min_quality_score)}"))
    if filters.require_relevant and "question_relevance" in columns:
        conds.append(("relevance", "question_relevance IS DISTINCT FROM 'Relevant'"))
    if filters.require_correct and "answer_correctness" in columns:
        conds.append(("correctness", "answer_correctness IS DISTINCT FROM 'Correct'"))
    if filters.require_evidence_ok and "evidence_ok" in columns:
        conds.append(("evidence", "evidence_ok IS NOT TRUE"))
    return conds


def build_dataset(
    stage: str,
    inputs: dict[str, list[str]],
    output: str,
    summary_output: str,
    params: dict,
    mem_mb: int | None = None,
    threads: int | None = None,
) -> dict:
    """Write the final dataset of `stage` and its summary; returns the summary.

    inputs: `qa` (the stage's shards), `documents` (seed documents.parquet of every shard),
    optionally `judge` (the judge's shards for this stage), `verify` (the verify stage's shards for
    this stage) and `upstream` (ocr / classify shards).
    params: the export `filters`, `dedup` and `split` sections.
    """
    filters, dedup, split = _settings(params)
    qa_files, judge_files = list(inputs.get("qa") or []), list(inputs.get("judge") or [])
    doc_files, up_files = list(inputs.get("documents") or []), list(inputs.get("upstream") or [])
    judged = bool(judge_files)
    carried = get_spec(stage).carries  # (upstream stage, column) or None
    verify_files = list(inputs.get("verify") or [])
    verified = bool(verify_files)
    spill = Path(output).resolve().parent

    with duckdb_connection(mem_mb, spill, threads) as con:
        if qa_files:
            con.execute(
                f"CREATE VIEW qa AS SELECT * EXCLUDE (filename), "
                f"regexp_extract(filename, '([0-9]+)\\.parquet$', 1) AS shard FROM {read_parquet(qa_files, True)}"
            )
        else:
            empty = _empty_stage_table(stage)
            con.register("qa_empty", empty)
            con.execute("CREATE VIEW qa AS SELECT *, NULL::VARCHAR AS shard FROM qa_empty")
        columns = columns_of(con, "qa")
        colset = set(columns)

        judge_cols = ""
        if judged:
            con.execute(
                "CREATE VIEW judge AS SELECT qa_row_id, status AS judge_status, model AS judge_model, "
                f"weighted_quality_score, {', '.join(JUDGE_SCORE_COLUMNS)}, qa_quality_judge "
                f"FROM {read_parquet(judge_files)} WHERE qa_row_id IS NOT NULL"
            )
            judge_cols = (
                ", j.judge_status, j.judge_model, j.weighted_quality_score, "
                + ", ".join(f"j.{c}" for c in JUDGE_SCORE_COLUMNS)
                + ", j.qa_quality_judge"
            )
        verify_cols = verify_join = ""
        if verified:
            con.execute(
                "CREATE VIEW verify AS SELECT qa_row_id, status AS verify_status, model AS verify_model, "
                "benchmark_format AS verify_format, verify_answer, verify_score "
                f"FROM {read_parquet(verify_files)}"
            )
            verify_cols = ", v.verify_status, v.verify_model, v.verify_format, v.verify_answer, v.verify_score"
            verify_join = " LEFT JOIN verify v ON v.qa_row_id = q.row_id"
        if doc_files:
            con.execute(f"CREATE VIEW docs_seeded AS SELECT * FROM {read_parquet(doc_files, True)}")
            # Seeds written before documents carried their sha256 have none: never a duplicate.
            sha = "sha256" if "sha256" in columns_of(con, "docs_seeded") else "NULL::VARCHAR"
            con.execute(
                "CREATE VIEW docs AS SELECT doc_id, url, date, total_pages::INTEGER AS total_pages, "
                "coalesce(CASE WHEN json_valid(extra) THEN json_extract_string(extra, '$.id') END, doc_id) AS source_id, "
                f"{sha} AS sha256, "
                # The first copy (earliest shard, then doc_id) is kept: later shards never change it.
                f"CASE WHEN {sha} IS NOT NULL THEN first_value(doc_id) OVER (PARTITION BY {sha} ORDER BY "
                "coalesce(try_cast(regexp_extract(filename, '([0-9]+)/documents\\.parquet$', 1) AS BIGINT), 0), "
                "filename, doc_id) END AS first_copy "
                "FROM docs_seeded"
            )
        else:
            con.execute(
                "CREATE VIEW docs AS SELECT NULL::VARCHAR AS doc_id, NULL::VARCHAR AS url, NULL::VARCHAR AS date, "
                "NULL::INTEGER AS total_pages, NULL::VARCHAR AS source_id, NULL::VARCHAR AS sha256, "
                "NULL::VARCHAR AS first_copy WHERE false"
            )
        up_join = up_cols = ""
        if carried and up_files:
            _, up_column = carried
            con.execute(
                f"CREATE VIEW up AS SELECT doc_id, pages[1] AS page, {up_column} "
                f"FROM {read_parquet(up_files)} WHERE status = 'ok'"
            )
            up_join = " LEFT JOIN up u ON u.doc_id = q.doc_id AND u.page = q.pages[1]"
            up_cols = f", u.{up_column}"

        if "evidence_pages" in colset:
            evidence = "coalesce(json_array_length(q.evidence_pages), 0)::INTEGER"
        else:
            evidence = "coalesce(len(q.pages), 0)::INTEGER"
        answer_format = (
            answer_format_sql("q.answer", "q.question_type" if "question_type" in colset else None)
            if "answer" in colset
            else "NULL::VARCHAR"
        )
        question_norm = normalised_question_sql("q.question") if "question" in colset else "q.row_id"
        con.execute(
            f"""CREATE TEMP TABLE joined AS
            SELECT q.*, d.url, d.date, d.total_pages, coalesce(d.source_id, q.doc_id) AS source_id,
                   nullif(d.first_copy, q.doc_id) AS _first_copy{judge_cols}{verify_cols}{up_cols},
                   {answer_format} AS answer_format, {evidence} AS num_evidence_pages,
                   {question_norm} AS _qnorm
            FROM qa q LEFT JOIN docs d ON d.doc_id = q.doc_id{" LEFT JOIN judge j ON j.qa_row_id = q.row_id" if judged else ""}{verify_join}{up_join}"""
        )

        conds = filter_conditions(filters, colset, judged, verified)
        contaminated = _contaminated_questions(con, params.get("decontamination"), colset)
        if contaminated is not None:
            conds.insert(1, ("contaminated", "row_id IN (SELECT row_id FROM contaminated_questions)"))
        if dedup.documents:
            conds.insert(1 + (contaminated is not None), ("duplicate_document", "_first_copy IS NOT NULL"))
        case = "CASE " + " ".join(f"WHEN {cond} THEN {sql_str(name)}" for name, cond in conds) + " END"
        if dedup.keep == "best":
            order = []
            if judged:
                order.append("weighted_quality_score DESC NULLS LAST")
            if "quality_score" in colset:
                order.append("quality_score DESC NULLS LAST")
            order.append("row_id")
        else:
            order = ["row_id"]
        dup = "false"
        if dedup.enabled:
            dup = f"row_number() OVER (PARTITION BY doc_id, _qnorm, (_drop IS NULL) ORDER BY {', '.join(order)}) > 1"
        con.execute(f"CREATE TEMP TABLE reasons AS SELECT *, {case} AS _drop FROM joined")
        con.execute(
            f"CREATE TEMP TABLE decided AS SELECT * EXCLUDE (_drop), "
            f"CASE WHEN _drop IS NULL AND {dup} THEN 'duplicate' ELSE _drop END AS drop_reason FROM reasons"
        )

        # The split is a property of the document, decided over all seeded documents so it is the
        # same for every QA stage (the small-run fallback looks at the whole set).
        all_docs = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT doc_id FROM (SELECT doc_id FROM docs UNION ALL SELECT doc_id FROM qa) "
                "WHERE doc_id IS NOT NULL ORDER BY doc_id"
            ).fetchall()
        ]
        splits = assign_splits(all_docs, split.validation_fraction, split.seed, split.min_validation_documents)
        con.register("doc_splits", pa.table({"doc_id": list(splits), "split": list(splits.values())}))

        drops = dict(
            con.execute("SELECT drop_reason, count(*) FROM decided WHERE drop_reason IS NOT NULL GROUP BY 1").fetchall()
        )
        total, ok = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ok') FROM qa").fetchall()[0]

        keep_cols = [
            c
            for c in columns_of(con, "decided")
            if c not in INTERNAL_COLUMNS
            and c not in ("_qnorm", "_first_copy", "drop_reason", "judge_status", "verify_status", "verify_format")
        ]
        select = ", ".join(f"k.{c}" for c in keep_cols if c != "shard")
        con.execute(
            f"""CREATE TEMP TABLE kept AS
            SELECT k.shard, s.split, {select}
            FROM decided k JOIN doc_splits s ON s.doc_id = k.doc_id
            WHERE k.drop_reason IS NULL"""
        )
        with atomic_path(output) as tmp:
            con.execute(
                f"COPY (SELECT * FROM kept ORDER BY split, shard, doc_id, row_id) "
                f"TO {sql_str(str(tmp))} (FORMAT parquet, COMPRESSION zstd)"
            )

        split_rows = dict(con.execute("SELECT split, count(*) FROM kept GROUP BY 1").fetchall())
        split_docs = dict(con.execute("SELECT split, count(DISTINCT doc_id) FROM kept GROUP BY 1").fetchall())
        models = {stage: _distinct(con, "SELECT DISTINCT model FROM qa WHERE status = 'ok'")}
        if judged:
            models["judge"] = _distinct(con, "SELECT DISTINCT judge_model FROM judge WHERE judge_status = 'ok'")
        if verified:
            models["verify"] = _distinct(con, "SELECT DISTINCT verify_model FROM verify WHERE verify_status = 'ok'")
        if carried and up_files:
            up_stage = carried[0]
            models[up_stage] = _distinct(
                con, f"SELECT DISTINCT model FROM {read_parquet(up_files)} WHERE status = 'ok'"
            )
        kept = sum(split_rows.values())
        copies = con.execute(
            "SELECT doc_id, first_copy, sha256 FROM docs WHERE first_copy IS DISTINCT FROM doc_id "
            "AND first_copy IS NOT NULL ORDER BY doc_id LIMIT 1000"
        ).fetchall()

    summary = {
        "stage": stage,
        "judged": judged,
        "verified": verified,
        "rows": int(total),
        "ok": int(ok),
        "dropped": {reason: int(drops.get(reason, 0)) for reason in DROP_ORDER},
        "kept": int(kept),
        "splits": {s: int(split_rows.get(s, 0)) for s in ("train", "validation")},
        "documents": {s: int(split_docs.get(s, 0)) for s in ("train", "validation")},
        "models": models,
        "filters": [{"name": name, "drops_when": cond} for name, cond in conds]
        + (
            [{"name": "duplicate", "drops_when": f"near-identical question within a document (keep {dedup.keep})"}]
            if dedup.enabled
            else []
        ),
        "settings": {"filters": filters.model_dump(), "dedup": dedup.model_dump(), "split": split.model_dump()},
    }
    if dedup.documents:
        # Which seeded documents are copies of another (their rows, if any, are not in the dataset).
        summary["duplicate_documents"] = [
            {"doc_id": doc_id, "same_bytes_as": first, "sha256": sha} for doc_id, first, sha in copies
        ]
    if contaminated is not None:
        # Which benchmark question each dropped row overlaps (the rows are not in the dataset).
        summary["contaminated_questions"] = contaminated[:1000]
    assert summary["rows"] == summary["kept"] + sum(summary["dropped"].values()), summary
    write_json_atomic(summary_output, summary)
    log.info(
        "%s: %d rows, %d kept (%s), dropped %s",
        stage,
        total,
        kept,
        summary["splits"],
        {k: v for k, v in summary["dropped"].items() if v},
    )
    return summary


def _distinct(con, query: str) -> list[str]:
    return sorted(str(r[0]) for r in con.execute(query).fetchall() if r[0] is not None)


def read_summary(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
