"""Layout (a): exactly the reference recipe's columns, so its own stage scripts (and tools written
for them) read our output unchanged. Column by column (docs/contracts.md has the same table):

seed columns, as the reference's seed writes them
- `id` (string): the source document's id (FinePDFs row id; our doc_id for other sources)
- `url`, `date` (string, null when unknown)
- per-page stages (03, 05, 06): `page_number` (int64, 0-based, as the reference's seed)
- windowed QA (07): `start_page` (int64, 0-based), `end_page` (int64, 0-based, exclusive),
  `window_size` (int64)
- `total_pages` (int64)
- `png_images_base64` (string): a JSON array of base64 PNG strings, in page order

generated columns, the reference's names, label strings and types
- 03 text QA: `transcribed_texts` (string, the OCR text the question came from),
  `question_type` (label: "multiple choice", "true or false", "short answer", "numerical
  question"), `question_and_answer` (struct {question, answer}), `question_relevance`
  ("Relevant"/"Irrelevant"), `answer_correctness` ("Correct"/"Incorrect")
- 05 visual QA: `page_classification` (struct, stage 04's structured output as the reference
  stores it: {contains_reasoning_content bool, primary_categories list<string>, subcategories
  list<string>, reasoning_complexity_score int64, justification string}), `question_type` (label),
  `question`, `answer`, `answer__reasoning_content` (string or null), `question_relevance`,
  `answer_correctness`
- 06/07/08 anchored QA: `question_type` (label, e.g. "numerical (int)"), `question`, `answer`,
  `answer__reasoning_content` (the reasoning trace; the reference engine's
  `<column>__reasoning_content` naming), `quality_score` (string "0", "1" or "2")

Where they go, the reference's own path shape: `export/reference/{qa_stage}/parquet-files/
batch_{k:05d}.parquet`, so `export/reference` is an `artifact_path` and the QA stage a stage for
the reference's scripts. The train split's files come first, then validation's (no file holds
two splits); `export.json` lists each split's files and rows.

Nothing else is in these files: the judge's columns would collide with what the reference's own
judge (09) adds. What ties a row back to our data sits beside them, row for row in the same order
(the split's files in name order): `traceability/{split}.parquet` with `row_id`, `doc_id`,
`pages` (1-based), `evidence_pages` (1-based JSON), `answer_format`, the judge's
`weighted_quality_score` and `qa_quality_judge` where it ran. One folder per QA stage.
"""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path, get_logger
from ..registry import get_spec, qa_stages
from .common import fresh_tmp_dir, replace_dir, write_json_atomic
from .layout import arrow_fields, iter_dataset, write_layout

log = get_logger("export.reference")

PER_PAGE_STAGES = tuple(s for s in qa_stages() if get_spec(s).unit == "page")
ANCHORED = tuple(s for s in qa_stages() if get_spec(s).question_types == "anchored")

# The reference's question type labels, by our keys (reference-pipeline.md).
_ANCHORED_LABELS = {
    "multiple_choice": "multiple choice",
    "yes_no": "yes or no",
    "string": "string (word/phrase/short sentence)",
    "layout": "layout",
    "numerical_int": "numerical (int)",
    "numerical_float": "numerical (float)",
    "numerical_percentage": "numerical (percentage)",
    "list": "list of items",
    "not_answerable": "not answerable",
}
REFERENCE_LABELS = {
    "text_qa": {
        "multiple_choice": "multiple choice",
        "true_false": "true or false",
        "short_answer": "short answer",
        "numerical": "numerical question",
    },
    "visual_qa": {
        "multiple_choice": "multiple choices",
        "yes_no": "yes or no",
        "short": "number, word, phrase, short sentence, list of items",
        "not_answerable": "not answerable",
    },
    **{stage: _ANCHORED_LABELS for stage in ANCHORED},
}

_STR = pa.string()
_QA_STRUCT = pa.struct([("question", _STR), ("answer", _STR)])
_CLASSIFICATION_STRUCT = pa.struct(
    [
        ("contains_reasoning_content", pa.bool_()),
        ("primary_categories", pa.list_(_STR)),
        ("subcategories", pa.list_(_STR)),
        ("reasoning_complexity_score", pa.int64()),
        ("justification", _STR),
    ]
)
GENERATED = {
    "text_qa": [
        ("transcribed_texts", _STR),
        ("question_type", _STR),
        ("question_and_answer", _QA_STRUCT),
        ("question_relevance", _STR),
        ("answer_correctness", _STR),
    ],
    "visual_qa": [
        ("page_classification", _CLASSIFICATION_STRUCT),
        ("question_type", _STR),
        ("question", _STR),
        ("answer", _STR),
        ("answer__reasoning_content", _STR),
        ("question_relevance", _STR),
        ("answer_correctness", _STR),
    ],
    **{
        stage: [
            ("question_type", _STR),
            ("question", _STR),
            ("answer", _STR),
            ("answer__reasoning_content", _STR),
            ("quality_score", _STR),
        ]
        for stage in ANCHORED
    },
}
TRACE_COLUMNS = (
    "row_id",
    "doc_id",
    "pages",
    "evidence_pages",
    "answer_format",
    "weighted_quality_score",
    "qa_quality_judge",
)


def seed_fields(stage: str) -> list[pa.Field]:
    fields = [pa.field("id", _STR), pa.field("url", _STR), pa.field("date", _STR)]
    if stage in PER_PAGE_STAGES:
        fields.append(pa.field("page_number", pa.int64()))
    if get_spec(stage).unit == "window":
        fields += [
            pa.field("start_page", pa.int64()),
            pa.field("end_page", pa.int64()),
            pa.field("window_size", pa.int64()),
        ]
    fields += [pa.field("total_pages", pa.int64()), pa.field("png_images_base64", _STR)]
    return fields


def reference_schema(stage: str, dataset: str | None = None) -> pa.Schema:
    return pa.schema(seed_fields(stage) + [pa.field(name, dtype) for name, dtype in GENERATED[stage]])


def reference_label(stage: str, key: str | None) -> str | None:
    return REFERENCE_LABELS[stage].get(key, key) if key is not None else None


def _question_and_answer(row: dict) -> dict:
    try:
        value = json.loads(row.get("question_and_answer") or "{}")
    except ValueError:
        value = {}
    return {"question": value.get("question", row.get("question")), "answer": value.get("answer", row.get("answer"))}


def _page_classification(row: dict) -> dict | None:
    try:
        value = json.loads(row.get("page_classification") or "null")
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {name: value.get(name) for name in _CLASSIFICATION_STRUCT.names}


def reference_row(stage: str, row: dict, pngs: list[bytes]) -> dict:
    """One output row in the reference's columns."""
    pages = [int(p) for p in row.get("pages") or []]
    out = {"id": row.get("source_id") or row["doc_id"], "url": row.get("url"), "date": row.get("date")}
    if stage in PER_PAGE_STAGES:
        out["page_number"] = pages[0] - 1 if pages else None  # the reference counts pages from 0
    if get_spec(stage).unit == "window":
        out.update(start_page=min(pages) - 1, end_page=max(pages), window_size=len(pages))
    out["total_pages"] = row.get("total_pages")
    out["png_images_base64"] = json.dumps([base64.b64encode(png).decode("ascii") for png in pngs])
    for name, _ in GENERATED[stage]:
        if name == "question_type":
            out[name] = reference_label(stage, row.get("question_type"))
        elif name == "question_and_answer":
            out[name] = _question_and_answer(row)
        elif name == "page_classification":
            out[name] = _page_classification(row)
        elif name == "answer__reasoning_content":
            out[name] = row.get("reasoning")
        elif name == "quality_score":
            out[name] = None if row.get("quality_score") is None else str(int(row["quality_score"]))
        else:
            out[name] = row.get(name)
    return out


def _write_traceability(dataset: str, folder) -> dict[str, int]:
    available = {f.name for f in arrow_fields(dataset)}
    columns = [c for c in TRACE_COLUMNS if c in available]
    by_split: dict[str, list[dict]] = {}
    for row in iter_dataset(dataset):
        by_split.setdefault(row["split"], []).append({c: row.get(c) for c in columns})
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in by_split.items():
        with atomic_path(folder / f"{split}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    return {split: len(rows) for split, rows in by_split.items()}


def reference_file_name(split: str, index: int, count: int, earlier: int) -> str:
    """The reference's `<stage>/parquet-files/batch_NNNNN.parquet`, numbered across the splits."""
    return f"parquet-files/batch_{earlier + index:05d}.parquet"


def write_reference(stage: str, dataset: str, pages_files: list[str], output_dir: str, max_file_mb: int) -> dict:
    schema = reference_schema(stage)

    def make_row(row: dict, records) -> dict:
        return reference_row(stage, row, [r.png for r in records])

    tmp = fresh_tmp_dir(output_dir)
    try:
        splits = write_layout(
            dataset, pages_files, tmp, schema, make_row, max_file_mb * 1024 * 1024, file_name=reference_file_name
        )
        traced = _write_traceability(dataset, tmp / "traceability")
        manifest = {
            "stage": stage,
            "layout": "reference",
            "splits": {s: {"rows": f.rows, "files": f.files, "num_bytes": f.num_bytes} for s, f in splits.items()},
            "traceability": {s: f"traceability/{s}.parquet" for s in traced},
        }
        assert all(traced[s] == f.rows for s, f in splits.items()), (traced, splits)
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


__all__ = ["REFERENCE_LABELS", "decode_images", "reference_row", "reference_schema", "write_reference"]
