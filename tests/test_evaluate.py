"""`evaluate` against a scripted double of the OpenAI server: the benchmark fixture
(tests/data/evaluate/samples.json, 3 sample PDFs, 10 questions) plus a sample whose PDF is
absent; scores worked out by hand; results.json re-scores identically with `longdoc-sdg score`."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, SAMPLE_PDF_DIR
from helpers.evaluate import PREDS, SAMPLES, ScriptedModel
from longdoc_sdg.cli import main as cli_main
from longdoc_sdg.evaluate import pages_per_question, run_evaluation
from longdoc_sdg.stages.evaluate import DEFAULT_MAX_IMAGES


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    samples = json.loads(SAMPLES.read_text())
    missing = dict(samples[0], doc_id="absent.pdf", question="What does the absent document say?")
    path = tmp / "samples.json"
    path.write_text(json.dumps(samples + [missing]))
    server = ScriptedModel([s["question"] for s in samples])
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 20}
        scores = run_evaluation(
            str(path), str(SAMPLE_PDF_DIR), str(tmp / "out"), endpoint, {"max_images": 2}, {"dpi": 30}
        )
    finally:
        server.stop()
    return tmp / "out", scores, server, samples


def test_scores_by_hand(evaluated):
    _, scores, _, _ = evaluated
    assert (scores["samples"], scores["answered"], scores["failed"]) == (11, 10, 1)
    official, fixed = scores["official"], scores["fixed"]
    assert official["errors"] == 1 and official["overall"]["n"] == 9
    assert official["overall"]["accuracy"] == pytest.approx((4 + 5 / 6 + 5 / 7) / 9)
    assert official["unanswerable"] == pytest.approx({"accuracy": (1 + 5 / 7) / 2, "n": 2})
    assert fixed["errors"] == 0 and fixed["overall"]["n"] == 10
    assert fixed["overall"]["accuracy"] == pytest.approx((5 + 5 / 6) / 10)
    assert fixed["unanswerable"] == pytest.approx({"accuracy": 1 / 2, "n": 2})


def test_results_file_is_the_benchmark_layout_and_rescores_identically(evaluated, capsys):
    out, scores, _, samples = evaluated
    results = json.loads((out / "results.json").read_text())
    assert [r["question"] for r in results] == [s["question"] for s in samples]
    for result, sample, pred in zip(results, samples, PREDS):
        assert {k: result[k] for k in sample} == sample
        assert result["pred"] == pred and result["response"].endswith(f"{pred}.")
        assert result["extracted_res"].startswith("Extracted answer:")
    assert results[8]["score"] is None and "eval" in results[8]["score_error"]
    assert cli_main(["score", str(out / "results.json")]) == 0
    assert json.loads(capsys.readouterr().out) == scores["official"]
    assert cli_main(["score", str(out / "results.json"), "--mode", "fixed"]) == 0
    assert json.loads(capsys.readouterr().out) == scores["fixed"]


def test_missing_pdf_is_a_failure_row_and_pages_are_capped(evaluated):
    out, _, server, samples = evaluated
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures == [
        {
            "sample_index": 10,
            "doc_id": "absent.pdf",
            "question": "What does the absent document say?",
            "reason": "missing_document",
            "message": "no seeded PDF named 'absent.pdf' in evaluate.documents",
        }
    ]
    assert not any("absent document" in p for p in server.prompts)  # never asked
    assert set(server.images_per_question.values()) == {2}  # every document is longer than max_images
    first = next(p for p in server.prompts if samples[0]["question"] in p and "Extracted answer" not in p)
    assert re.search(r"The document has 6 pages; the first 2 are shown", first)
    page = (out / "report.html").read_text()
    assert "official scoring" in page and "fixed scoring" in page and "1 failed" in page


def evaluate_cli(samples, out, *extra) -> int:
    return cli_main(
        [
            "evaluate",
            "--samples",
            str(samples),
            "--documents",
            str(SAMPLE_PDF_DIR),
            "--out",
            str(out),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("answer_format", None, "row 2 (doc_id 'MVT_Rnews.pdf'): missing field answer_format"),
        ("answer_format", "Bool", "row 2 (doc_id 'MVT_Rnews.pdf'): field answer_format is 'Bool'"),
        ("question", None, "row 2 (doc_id 'MVT_Rnews.pdf'): missing field question"),
    ],
)
def test_bad_samples_name_the_row_and_field(tmp_path, capsys, field, value, message):
    bad = json.loads(SAMPLES.read_text())[:2]
    if value is None:
        del bad[1][field]
    else:
        bad[1][field] = value
    (tmp_path / "s.json").write_text(json.dumps(bad))
    assert evaluate_cli(tmp_path / "s.json", tmp_path / "o") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()  # nothing asked, nothing written


def test_pages_per_question_follow_the_deployment_image_limit():
    assert pages_per_question(None, 2) == 2  # the deployment's --limit-mm-per-prompt
    assert pages_per_question(None, None) == DEFAULT_MAX_IMAGES
    assert pages_per_question(1, 2) == 1 and pages_per_question(7, None) == 7
    with pytest.raises(ValueError, match="evaluate.max_images is 3, but the deployment accepts at most 2"):
        pages_per_question(3, 2, "evaluate.max_images")
    with pytest.raises(ValueError, match="accepts no images"):
        pages_per_question(None, 0)


def test_max_images_above_the_deployment_limit_is_refused(tmp_path, capsys):
    deployment = REPO / "config" / "deployments" / "tiny-cpu-vlm.yaml"  # {"image": 2}
    code = evaluate_cli(SAMPLES, tmp_path / "o", "--deployment", str(deployment), "--max-images", "3")
    assert code == 2
    assert "--max-images is 3, but the deployment accepts at most 2 image(s)" in capsys.readouterr().err


def test_rerun_keeps_the_seed_unless_its_settings_change(tmp_path):
    """Same PDFs and seed settings: the seeded pages are reused; another dpi: rendered again (and
    answers left by an interrupted run on the old pages are not resumed)."""
    samples = json.loads(SAMPLES.read_text())[:2]
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(samples))
    pages = tmp_path / "out" / "seed" / "pages.parquet"
    server = ScriptedModel([s["question"] for s in samples])
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 20}

        def run(dpi):
            run_evaluation(
                str(path), str(SAMPLE_PDF_DIR), str(tmp_path / "out"), endpoint, {"max_images": 1}, {"dpi": dpi}
            )
            return pages.stat().st_mtime_ns, server.requests

        seeded, asked = run(20)
        assert asked == 2 * len(samples)  # answer + extraction per question
        assert run(20)[0] == seeded
        assert run(25)[0] != seeded
    finally:
        server.stop()
    assert json.loads((tmp_path / "out" / "seed" / "seeded-from.json").read_text())["seed"] == {"dpi": 25}
