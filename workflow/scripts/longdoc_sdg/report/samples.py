"""The report's page of sample QA rows: a few rows per QA stage with thumbnails of the pages the
question was asked on, so a person can look at the data itself.

Rows come from each stage's final dataset when the export ran and kept some, else from the
stage's ok rows (labelled so). The choice is deterministic (smallest row ids after hashing).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..config import demo_source
from ..export.common import (
    columns_of,
    duckdb_connection,
    read_parquet,
    sql_str,
)
from ..io import get_logger, write_text_atomic
from ..registry import qa_stages

log = get_logger("report.samples")

ROWS_PER_STAGE = 4
MAX_THUMBNAILS = 4
THUMBNAIL_WIDTH = 180


def _thumbnail(png: bytes, width: int = THUMBNAIL_WIDTH) -> bytes:
    """A page PNG shrunk (by halves) to about `width` pixels wide."""
    import pymupdf

    pix = pymupdf.Pixmap(png)
    while pix.width > 2 * width:
        pix.shrink(1)
    return pix.tobytes("png")


def pick_rows(con, stage: str, dataset: str | None, shards: list[str], n: int) -> tuple[list[dict], str]:
    """Up to n rows of a stage and where they came from (its final dataset, else its ok rows)."""
    candidates = [("exported rows", [dataset], "true")] if dataset else []
    candidates.append(("ok rows; none exported" if dataset else "ok rows; no export ran", shards, "status = 'ok'"))
    for source, files, where in candidates:
        src = read_parquet(files)
        cols = set(columns_of(con, src))
        score = "weighted_quality_score" if "weighted_quality_score" in cols else "NULL"
        evidence = "evidence_pages" if "evidence_pages" in cols else "NULL"
        rows = con.execute(f"""SELECT row_id, doc_id, pages, question_type, question, answer,
                {score} AS judge_score, {evidence} AS evidence_pages FROM {src} WHERE {where}
                ORDER BY hash(row_id) LIMIT {int(n)}""").fetchall()
        if rows:
            keys = ("row_id", "doc_id", "pages", "question_type", "question", "answer", "judge_score", "evidence_pages")
            return [dict(zip(keys, r)) for r in rows], source
    return [], "no ok rows"


def page_images(con, pages_files: list[str], wanted: set[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    if not wanted or not pages_files:
        return {}
    pairs = ", ".join(f"({sql_str(d)}, {int(p)})" for d, p in sorted(wanted))
    rows = con.execute(f"""SELECT doc_id, page_number, png FROM {read_parquet(pages_files)}
        WHERE (doc_id, page_number) IN ({pairs})""").fetchall()
    return {(d, p): _thumbnail(png) for d, p, png in rows}


def samples_html(sections: list[dict], images: dict, demo: bool | str) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>longdoc-sdg sample rows</title>",
        (
            "<style>body{font-family:sans-serif;font-size:14px;margin:1.5em}.row{border:1px solid #ccc;"
            "padding:.6em;margin:.8em 0}.row img{border:1px solid #999;margin:2px}.meta{color:#555;font-size:12px}"
            ".demo{background:#fff3cd;border:2px solid #d39e00;padding:.6em;font-weight:bold}</style></head><body>"
        ),
        "<h2>Sample QA rows</h2>",
    ]
    if demo:
        parts.append(
            f"<p class='demo'>DEMO DATA: these questions and answers come from {html.escape(demo_source(demo))}, "
            "not for training.</p>"
        )
    for section in sections:
        parts.append(
            f"<h3>{html.escape(section['stage'])} <span class='meta'>({html.escape(section['source'])})</span></h3>"
        )
        if not section["rows"]:
            parts.append("<p class='meta'>No rows to show.</p>")
        for row in section["rows"]:
            pages = list(row["pages"] or [])
            thumbs = "".join(
                f"<img alt='page {p}' title='page {p}' width='{THUMBNAIL_WIDTH}' "
                f"src='data:image/png;base64,{base64.b64encode(images[(row['doc_id'], p)]).decode()}'>"
                for p in pages[:MAX_THUMBNAILS]
                if (row["doc_id"], p) in images
            )
            more = f" (+{len(pages) - MAX_THUMBNAILS} more pages)" if len(pages) > MAX_THUMBNAILS else ""
            score = "" if row["judge_score"] is None else f"; judge score {row['judge_score']:.2f}"
            evidence = f"; evidence pages {row['evidence_pages']}" if row["evidence_pages"] else ""
            parts.append(
                "<div class='row'>"
                f"<p><b>Q:</b> {html.escape(str(row['question']))}</p>"
                f"<p><b>A:</b> {html.escape(str(row['answer']))}</p>"
                f"<p class='meta'>{html.escape(str(row['question_type']))}; document {html.escape(row['doc_id'])}, "
                f"pages {html.escape(str(pages))}{html.escape(evidence)}{score}; row {html.escape(row['row_id'])}</p>"
                f"<div>{thumbs}{html.escape(more)}</div></div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_samples(
    inputs: dict[str, list[str]],
    output: str,
    demo: bool | str = False,
    mem_mb: int | None = None,
    rows_per_stage: int = ROWS_PER_STAGE,
) -> None:
    """inputs: one key per QA stage with its shards, `export_datasets`, `pages` (seed shards)."""
    datasets = {Path(f).name.split(".")[0]: f for f in inputs.get("export_datasets") or []}
    with duckdb_connection(mem_mb, str(Path(output).resolve().parent)) as con:
        sections = []
        for stage in qa_stages():
            if not inputs.get(stage):
                continue
            rows, source = pick_rows(con, stage, datasets.get(stage), list(inputs[stage]), rows_per_stage)
            sections.append({"stage": stage, "rows": rows, "source": source})
        wanted = {
            (r["doc_id"], p) for s in sections for r in s["rows"] for p in list(r["pages"] or [])[:MAX_THUMBNAILS]
        }
        images = page_images(con, list(inputs.get("pages") or []), wanted)
    write_text_atomic(output, samples_html(sections, images, demo))
    log.info("samples: %s rows, %d thumbnails", {s["stage"]: len(s["rows"]) for s in sections}, len(images))
