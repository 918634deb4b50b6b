"""Pages without a text layer: marked by OCR, counted in the report, sent to the OCR model only
under `engine: auto`, and recorded (not dropped) by text QA. The PDF is made here: two text pages
and two pages that hold only a picture. The OCR endpoint is the fake server (a test double)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pymupdf
import pytest

from helpers.stage_inputs import TaggedFakeServer, build_seed
from longdoc_sdg.report.figures import summary_html
from longdoc_sdg.report.stats import compute_stats
from longdoc_sdg.stages import run_stage
from longdoc_sdg.stages.ocr import has_text_layer


def scanned_pdf(path) -> None:
    """Pages 1 and 3 carry text; pages 2 and 4 are a picture only (like a scan)."""
    picture = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 60, 80), False)
    picture.clear_with(200)
    png = picture.tobytes("png")
    doc = pymupdf.open()
    for number in range(1, 5):
        page = doc.new_page(width=300, height=400)
        if number % 2:
            page.insert_text((40, 60), f"Annual report, page {number}: revenue rose by 12 percent.")
        else:
            page.insert_image(pymupdf.Rect(20, 20, 280, 380), stream=png)
    doc.save(path)


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    scanned_pdf(folder / "scan.pdf")
    with pymupdf.open(folder / "scan.pdf") as doc:
        assert [bool(p.get_text().strip()) for p in doc] == [True, False, True, False]
        assert all(p.get_images() for p in list(doc)[1::2])
    return build_seed(folder / "seed", [folder / "scan.pdf"], max_pages=4)


def run(tmp_path, stage, inputs, params, endpoint=None):
    out = tmp_path / stage / "00000.parquet"
    summary = run_stage(stage, inputs, str(out), params, endpoint, 1, str(tmp_path / ".journal" / f"{stage}.jsonl"))
    return summary, sorted(pq.read_table(out).to_pylist(), key=lambda r: r["row_id"])


def test_has_text_layer():
    assert has_text_layer("some text", "[]")
    assert has_text_layer(None, '[{"bbox": [0, 0, 1, 1], "text": "x"}]')
    assert not has_text_layer("  \n", "[]") and not has_text_layer(None, None)


def test_auto_sends_only_image_pages_to_the_ocr_model(tmp_path, seed):
    server = TaggedFakeServer()
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 10}
        _, rows = run(tmp_path, "ocr", {"pages": seed["pages"]}, {"engine": "auto"}, endpoint)
        requests = server.stats()["requests"]
    finally:
        server.stop()
    assert [r["text_layer"] for r in rows] == ["text", "none", "text", "none"]
    assert [r["ocr_engine"] for r in rows] == ["pdf-text", "nemotron-parse", "pdf-text", "nemotron-parse"]
    assert [r["model"] for r in rows] == ["pdf-text", "fake-model", "pdf-text", "fake-model"]
    assert requests == 2  # one per image-only page, none for the pages with a text layer
    assert "Revenue rose 12%" in rows[1]["transcribed_texts"] and "page 1" in rows[0]["transcribed_texts"]
    assert all(r["status"] == "ok" for r in rows)


def test_pdf_text_marks_scans_text_qa_records_the_skip_report_counts(tmp_path, seed):
    _, ocr = run(tmp_path, "ocr", {"pages": seed["pages"]}, {"engine": "pdf-text"})
    assert [(r["text_layer"], bool(r["transcribed_texts"].strip())) for r in ocr] == [
        ("text", True),
        ("none", False),
        ("text", True),
        ("none", False),
    ]

    server = TaggedFakeServer()
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 10}
        summary, qa = run(tmp_path, "text_qa", {"ocr": str(tmp_path / "ocr" / "00000.parquet")}, {}, endpoint)
    finally:
        server.stop()
    skipped = [r for r in qa if r["status"] == "failed"]
    assert [r["pages"] for r in skipped] == [[2], [4]]
    assert {r["failure_reason"] for r in skipped} == {"no_text"}
    assert all("no text layer" in r["failure_message"] and r["prompt_tokens"] in (0, None) for r in skipped)
    assert sorted(r["pages"][0] for r in qa if r["status"] == "ok") == [1, 3]
    assert summary["rows"] == 4

    stats = compute_stats(
        {"ocr": [str(tmp_path / "ocr" / "00000.parquet")], "text_qa": [str(tmp_path / "text_qa" / "00000.parquet")]}
    )
    assert stats["totals"]["pages_without_text_layer"] == 2
    layers = {(r["text_layer"], r["ocr_engine"]): r["pages"] for r in stats["tables"]["text_layers"]}
    assert layers == {("none", "pdf-text"): 2, ("text", "pdf-text"): 2}
    reasons = {(r["stage"], r["reason"]): r["rows"] for r in stats["tables"]["failure_reasons"]}
    assert reasons[("text_qa", "no_text")] == 2
    assert "Pages without a text layer (scanned or image-only): <b>2</b>" in summary_html(stats)
