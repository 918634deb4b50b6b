"""The reference export layout against a schema written from the reference's documented output
(shared/docs/reference-pipeline.md, "Output layout a drop-in replacement must match", and the
stage table): column names and order, label strings and types, and the path shape."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.export_run import SyntheticRun, reference_rows
from longdoc_sdg.export.dataset import build_dataset
from longdoc_sdg.export.reference import write_reference
from longdoc_sdg.registry import qa_stages

QA_STAGES = qa_stages()

STRING, INT = "string", "int64"
SEED = {"id": STRING, "url": STRING, "date": STRING}
# 06 as the document lists it: id, url, date, page_number, total_pages, png_images_base64,
# question_type, question, answer, answer__reasoning_content, quality_score (a string).
ANCHORED = {
    "question_type": STRING,
    "question": STRING,
    "answer": STRING,
    "answer__reasoning_content": STRING,
    "quality_score": STRING,
}
EXPECTED = {
    "single_page_qa": {**SEED, "page_number": INT, "total_pages": INT, "png_images_base64": STRING, **ANCHORED},
    "windowed_qa": {
        **SEED,
        "start_page": INT,
        "end_page": INT,
        "window_size": INT,
        "total_pages": INT,
        "png_images_base64": STRING,
        **ANCHORED,
    },
    "whole_document_qa": {**SEED, "total_pages": INT, "png_images_base64": STRING, **ANCHORED},
    "visual_qa": {
        **SEED,
        "page_number": INT,
        "total_pages": INT,
        "png_images_base64": STRING,
        "page_classification": (
            "struct<contains_reasoning_content: bool, primary_categories: list<element: string>, "
            "subcategories: list<element: string>, reasoning_complexity_score: int64, justification: string>"
        ),
        "question_type": STRING,
        "question": STRING,
        "answer": STRING,
        "answer__reasoning_content": STRING,
        "question_relevance": STRING,
        "answer_correctness": STRING,
    },
    "text_qa": {
        **SEED,
        "page_number": INT,
        "total_pages": INT,
        "png_images_base64": STRING,
        "transcribed_texts": STRING,
        "question_type": STRING,
        "question_and_answer": "struct<question: string, answer: string>",
        "question_relevance": STRING,
        "answer_correctness": STRING,
    },
}
# The documented question type labels of each stage.
LABELS = {
    "text_qa": {"multiple choice", "true or false", "short answer", "numerical question"},
    "visual_qa": {
        "multiple choices",
        "yes or no",
        "number, word, phrase, short sentence, list of items",
        "not answerable",
    },
}
for _stage in ("single_page_qa", "windowed_qa", "whole_document_qa"):
    LABELS[_stage] = {
        "multiple choice",
        "yes or no",
        "string (word/phrase/short sentence)",
        "layout",
        "numerical (int)",
        "numerical (float)",
        "numerical (percentage)",
        "list of items",
        "not answerable",
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    run = SyntheticRun(root)
    out = {}
    for stage in QA_STAGES:
        dataset = root / "datasets" / f"{stage}.parquet"
        build_dataset(
            stage,
            run.dataset_inputs(stage),
            str(dataset),
            str(root / "datasets" / f"{stage}.json"),
            {"filters": {"min_judge_score": None, "require_format_ok": False, "min_quality_score": None}},
        )
        write_reference(stage, str(dataset), run.seed_files("pages"), str(root / "ref" / stage), 500)
        out[stage] = root / "ref" / stage
    return out


@pytest.mark.parametrize("stage", QA_STAGES)
def test_columns_types_and_labels_follow_the_reference(folders, stage):
    files = sorted(folders[stage].glob("parquet-files/*.parquet"))
    assert files
    for f in files:
        schema = pq.read_schema(f)
        assert {field.name: str(field.type) for field in schema} == EXPECTED[stage]
        assert list(schema.names) == list(EXPECTED[stage])  # the order too
    rows = reference_rows(folders[stage])
    assert rows
    labels = {r["question_type"] for r in rows}
    assert labels <= LABELS[stage] and labels, labels
    for r in rows:
        trace = r["trace"]
        if "page_classification" in r:  # stage 04's structured output, a struct as the reference keeps it
            assert isinstance(r["page_classification"]["primary_categories"], list), r["page_classification"]
            assert isinstance(r["page_classification"]["contains_reasoning_content"], bool)
        if "quality_score" in r:
            assert r["quality_score"] in ("0", "1", "2")
        if "page_number" in r:
            assert r["page_number"] == trace["pages"][0] - 1  # 0-based, as the reference's seed
        if "start_page" in r:
            assert (r["start_page"], r["end_page"]) == (trace["pages"][0] - 1, trace["pages"][-1])
        assert pa.types.is_string(pa.array([r["id"]]).type)


def test_no_column_a_reference_stage_would_add_again(folders):
    # The reference's judge (09) adds these; its engine adds `<column>__reasoning_content`.
    for stage, folder in folders.items():
        names = set(pq.read_schema(sorted(folder.glob("parquet-files/*.parquet"))[0]).names)
        assert not names & {"qa_quality_judge", "weighted_quality_score", "reasoning", "row_id", "doc_id", "split"}


def test_files_are_where_the_reference_puts_a_stage_s_output(folders):
    """`<artifact_path>/<stage>/parquet-files/batch_NNNNN.parquet`, numbered from 0 across the
    splits (train's first, no file holding two), and nothing else beside them but the
    traceability tables and export.json."""
    for stage, folder in folders.items():
        manifest = json.loads((folder / "export.json").read_text())
        listed = [
            name for split in ("train", "validation") for name in manifest["splits"].get(split, {}).get("files", [])
        ]
        assert listed == [f"parquet-files/batch_{k:05d}.parquet" for k in range(len(listed))], listed
        on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        traced = sorted(f"traceability/{split}.parquet" for split in manifest["splits"])
        assert on_disk == sorted(listed + traced + ["export.json"]), on_disk
        assert all(re.fullmatch(r"parquet-files/batch_\d{5}\.parquet", name) for name in listed)
        assert {s: f["rows"] for s, f in manifest["splits"].items()} == {
            s: pq.read_metadata(folder / t).num_rows for s, t in manifest["traceability"].items()
        }
