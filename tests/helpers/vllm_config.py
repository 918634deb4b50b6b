"""Configs for workflow runs on the real CPU vLLM with the tiny random-weight model (no tests here)."""

from __future__ import annotations

from pathlib import Path

import pymupdf

from conftest import copy_pdfs
from longdoc_sdg.registry import model_stages

NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def shortest_pdfs(pdfs: list[Path], count: int) -> list[Path]:
    def pages(path):
        with pymupdf.open(path) as doc:
            return doc.page_count

    return sorted(pdfs, key=pages)[:count]


def tiny_model_stage_settings() -> dict:
    """Small budgets and constrained JSON so a random model's replies are still schema-valid:
    stage -> its `settings`."""
    # A random model fills string fields up to their caps: ~1500 tokens lets JSON replies close.
    common = {"max_tokens": 1500, "num_records": 3, "sampling": {"extra_body": NO_THINKING}}
    stages = {stage: dict(common) for stage in model_stages()}
    # OCR from the PDF text layer here: Nemotron-Parse markup from a random model never closes
    # (every row a 'length' failure), which would leave text_qa nothing to read.
    # test_workflow_vllm.py sends the Nemotron-Parse request format to the real server alone.
    stages["ocr"] = {"engine": "pdf-text"}
    for stage in ("single_page_qa", "windowed_qa"):
        stages[stage].update(constrain_output=True)
    stages["whole_document_qa"].update(output_format="json")
    stages["visual_qa"]["check_sampling"] = {"extra_body": NO_THINKING}
    stages["whole_document_qa"]["num_records"] = 2
    stages["whole_document_qa"]["max_pages"] = 8
    stages["windowed_qa"]["window_size"] = 2
    return stages


def base_config(workdir: Path, pdfs: list[Path]) -> dict:
    pdf_dir = copy_pdfs(pdfs, workdir / "pdfs")
    return {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "sharding": {"settings": {"documents_per_shard": 1}},
        # Small pages keep every image near 200 tokens for the tiny model's context.
        "seed": {"settings": {"dpi": 40}},
    }
