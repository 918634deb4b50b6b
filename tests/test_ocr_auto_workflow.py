"""OCR `engine: auto` through Snakemake: the OCR deployment (the FAKE server standing in for
Nemotron-Parse under the serve machinery, tests/deployments/fake-vllm.yaml: a test double) runs
only when some page has no text layer.

- Real text PDFs only: no serve job is planned or run, no server process starts, every page
  is read from the text layer.
- A text PDF plus an image-only PDF made here: only the image-only pages go to the deployment
  (the fake server's request count says so), they are marked `text_layer: none`, counted in
  the report, and text QA records their skip (the OCR text of a picture is a few words here,
  below `min_text_chars`) instead of dropping them."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pymupdf
import pytest
import yaml

from conftest import REPO, copy_pdfs
from helpers.serving_workflow import DEPLOYMENT, SERVED, assert_unpublished, output_of, serve_dir, snakemake
from helpers.workflow import planned_jobs
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

pytestmark = pytest.mark.workflow

OTHER_STAGES = ("classify", "visual_qa", "single_page_qa", "windowed_qa", "whole_document_qa", "judge")
IMAGE_ONLY_PAGES = 3
REPO_DEPLOYMENTS = REPO / "tests" / "deployments"


def image_only_pdf(path) -> None:
    """Every page holds only a picture (like a scan without OCR): no text layer at all."""
    picture = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 40, 50), False)
    picture.clear_with(180)
    png = picture.tobytes("png")
    doc = pymupdf.open()
    for _ in range(IMAGE_ONLY_PAGES):
        page = doc.new_page(width=300, height=400)
        page.insert_image(pymupdf.Rect(20, 20, 280, 380), stream=png)
    doc.save(path)


def write_config(workdir, pdf_dir, stats_path, text_qa: dict | None = None, models: dict | None = None) -> None:
    """One shard of both documents (the fewest jobs; a shard mixing text and image-only pages)."""
    stages = {stage: {"enabled": False} for stage in OTHER_STAGES}
    # max_tokens 8: the fake server's OCR reply is then at most 8 words
    stages["ocr"] = {"model": "ocr", "settings": {"engine": "auto", "max_tokens": 8}}
    stages["text_qa"] = text_qa or {"enabled": False}
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "sharding": {"settings": {"documents_per_shard": 2}},
        "seed": {"settings": {"dpi": 24}},
        "models": {"ocr": {"deployment": DEPLOYMENT}, **(models or {})},
        "stages": stages,
        "serving": {
            "enabled": True,
            "run": {
                "launcher": "auto",
                "deployments_dir": str(REPO_DEPLOYMENTS),
                "overrides": {DEPLOYMENT: {"env_vars": {"FAKE_OPENAI_SERVER_STATS": str(stats_path)}}},
            },
        },
        "export": {"enabled": False},
        "report": {"enabled": text_qa is not None},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def ocr_rows(workdir) -> list[dict]:
    rows = []
    for path in sorted((workdir / "results" / "ocr").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def test_text_pdfs_start_no_ocr_server(tmp_path, real_pdfs):
    pdf_dir = copy_pdfs(sorted(real_pdfs, key=lambda p: p.stat().st_size)[:2], tmp_path / "pdfs")
    stats_path = tmp_path / "fake-stats.json"
    write_config(tmp_path, pdf_dir, stats_path)

    # The shard is listed by the manifest job; the run's Job stats then show every job it plans.
    assert snakemake(tmp_path, "results/manifest/index.json").returncode == 0
    result = snakemake(tmp_path)
    assert result.returncode == 0, output_of(result)[-4000:]
    jobs = planned_jobs(output_of(result))
    assert jobs.get("ocr") == 1 and "serve" not in jobs, jobs
    rows = ocr_rows(tmp_path)
    assert rows and {(r["status"], r["text_layer"], r["ocr_engine"], r["model"]) for r in rows} == {
        ("ok", "text", "pdf-text", "pdf-text")
    }
    assert "localrule serve:" not in output_of(result) and "rule serve:" not in output_of(result)
    assert not stats_path.exists()  # the fake server never started, so never answered
    assert not (serve_dir(tmp_path) / f"{DEPLOYMENT}.sentinel.json").exists()
    assert not (tmp_path / "results" / "logs" / "serve" / f"{DEPLOYMENT}.log").exists()
    assert_unpublished(tmp_path)
    # The deployment's `served` marker still closes its clients (nothing to stop).
    marker = json.loads((serve_dir(tmp_path) / f"{DEPLOYMENT}.served.json").read_text())
    assert marker == {"deployment": DEPLOYMENT, "clients": jobs["ocr"]}


def test_image_only_pages_go_to_the_ocr_deployment_marked_counted_and_skipped_by_text_qa(
    tmp_path, real_pdfs, monkeypatch
):
    pdf_dir = copy_pdfs([min(real_pdfs, key=lambda p: p.stat().st_size)], tmp_path / "pdfs")
    image_only_pdf(pdf_dir / "scanned.pdf")
    with pymupdf.open(pdf_dir / "scanned.pdf") as doc:
        assert not any(page.get_text().strip() for page in doc)
    stats_path = tmp_path / "fake-stats.json"
    monkeypatch.setenv("TEXT_QA_KEY", "fake-text-qa-key")  # the workflow's text QA endpoint key
    with spawn_fake_server("--api-key-env", "TEXT_QA_KEY", env=dict(os.environ)) as (_, base_url):
        models = {"text": {"endpoint": {"base_url": base_url, "model": "fake-model", "api_key_env": "TEXT_QA_KEY"}}}
        text_qa = {"model": "text", "settings": {"min_text_chars": 200}}
        write_config(tmp_path, pdf_dir, stats_path, text_qa, models)
        result = snakemake(tmp_path)
    assert result.returncode == 0, output_of(result)[-4000:]

    rows = ocr_rows(tmp_path)
    scanned = [r for r in rows if r["text_layer"] == "none"]
    text = [r for r in rows if r["text_layer"] == "text"]
    assert len(scanned) == IMAGE_ONLY_PAGES and text
    assert {(r["status"], r["ocr_engine"], r["model"]) for r in scanned} == {("ok", "nemotron-parse", SERVED)}
    assert {(r["ocr_engine"], r["model"]) for r in text} == {("pdf-text", "pdf-text")}
    # Only the image-only pages reached the deployment; then it was stopped.
    assert json.loads(stats_path.read_text())["requests"] == IMAGE_ONLY_PAGES
    assert "every client of fake-vllm is done; stopped its server" in output_of(result)
    assert_unpublished(tmp_path)

    # Counted in the report.
    stats = json.loads((tmp_path / "results" / "report" / "stats.json").read_text())
    assert stats["totals"]["pages_without_text_layer"] == IMAGE_ONLY_PAGES
    layers = {(r["text_layer"], r["ocr_engine"]): r["pages"] for r in stats["tables"]["text_layers"]}
    assert layers[("none", "nemotron-parse")] == IMAGE_ONLY_PAGES
    summary = (tmp_path / "results" / "report" / "summary.html").read_text()
    assert f"Pages without a text layer (scanned or image-only): <b>{IMAGE_ONLY_PAGES}</b>" in summary

    # Text QA records each image-only page's skip with its reason.
    scanned_ids = {r["row_id"] for r in scanned}
    qa = [r for p in sorted((tmp_path / "results" / "text_qa").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    skipped = [r for r in qa if r["doc_id"] == scanned[0]["doc_id"]]
    assert len(skipped) == IMAGE_ONLY_PAGES
    assert {(r["status"], r["failure_reason"]) for r in skipped} == {("failed", "too_little_text")}
    assert all("min_text_chars=200" in r["failure_message"] for r in skipped)
    assert all(any(source in r["failure_message"] for source in scanned_ids) for r in skipped)
