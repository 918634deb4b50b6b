"""Layout (a): the reference recipe's columns, for drop-in use with tools written for it.

Each row: the seed columns the reference writes (`id, url, date, total_pages`, `page_number` for
per-page stages, `start_page, end_page, window_size` for windows, and `png_images_base64`, a JSON
array of base64 PNG strings in page order), then the generated columns (the stage's own, the
judge's `qa_quality_judge` and `weighted_quality_score`, ...). `doc_id`, `row_id` and `split` are
kept for traceability. One folder per QA stage: `{split}-{i}-of-{n}.parquet`.
"""

from __future__ import annotations

import base64
import json

import pyarrow as pa

from ..io import get_logger
from .common import fresh_tmp_dir, replace_dir, write_json_atomic
from .layout import arrow_fields, write_layout

log = get_logger("export.reference")

PER_PAGE_STAGES = ("text_qa", "visual_qa", "single_page_qa")
DROPPED = {
    "shard",
    "split",
    "row_id",
    "doc_id",
    "url",
    "date",
    "total_pages",
    "source_id",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
}


def seed_fields(stage: str) -> list[pa.Field]:
    fields = [
        pa.field("id", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("url", pa.string()),
        pa.field("date", pa.string()),
        pa.field("total_pages", pa.int32()),
    ]
    if stage in PER_PAGE_STAGES:
        fields.append(pa.field("page_number", pa.int32()))
    if stage == "windowed_qa":
        fields += [
            pa.field("start_page", pa.int32()),
            pa.field("end_page", pa.int32()),
            pa.field("window_size", pa.int32()),
        ]
    fields.append(pa.field("png_images_base64", pa.string()))
    return fields


def reference_schema(stage: str, dataset: str) -> pa.Schema:
    generated = [f for f in arrow_fields(dataset) if f.name not in DROPPED]
    return pa.schema(seed_fields(stage) + [pa.field("row_id", pa.string()), pa.field("split", pa.string())] + generated)


def write_reference(stage: str, dataset: str, pages_files: list[str], output_dir: str, max_file_mb: int) -> dict:
    schema = reference_schema(stage, dataset)
    names = [f.name for f in schema]

    def make_row(row: dict, records) -> dict:
        pages = list(row["pages"] or [])
        out = {name: row.get(name) for name in names}
        out["id"] = row.get("source_id") or row["doc_id"]
        if "page_number" in out:
            out["page_number"] = pages[0] if pages else None
        if stage == "windowed_qa":
            out.update(start_page=min(pages), end_page=max(pages), window_size=len(pages))
        out["png_images_base64"] = json.dumps([base64.b64encode(r.png).decode("ascii") for r in records])
        return out

    tmp = fresh_tmp_dir(output_dir)
    try:
        splits = write_layout(dataset, pages_files, tmp, schema, make_row, max_file_mb * 1024 * 1024)
        manifest = {
            "stage": stage,
            "layout": "reference",
            "splits": {s: {"rows": f.rows, "files": f.files, "num_bytes": f.num_bytes} for s, f in splits.items()},
        }
        write_json_atomic(tmp / "export.json", manifest)
        replace_dir(tmp, output_dir)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    log.info("reference layout of %s: %s", stage, {s: f["rows"] for s, f in manifest["splits"].items()})
    return manifest


def decode_images(value: str) -> list[bytes]:
    """The PNG bytes of a `png_images_base64` cell."""
    return [base64.b64decode(item) for item in json.loads(value)]


__all__ = ["decode_images", "reference_schema", "write_reference"]
