"""Evidence pages are checked against the pages shown when a reply is read; the export never
trips over whatever integers an older shard holds (fake OpenAI server, a test double)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from helpers.export_run import SyntheticRun, make_row, write_rows
from helpers.stage_inputs import build_seed, real_pdfs
from longdoc_sdg.export.dataset import build_dataset
from longdoc_sdg.export.hub import write_hub
from longdoc_sdg.stages import run_stage
from longdoc_sdg.stages.replies import (
    BadEvidence,
    check_evidence,
    parse_tagged,
    tagged_regex,
)
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

HUGE = 3033751746
FORTY_DIGITS = 10**39 + 7
# Evidence lists the double answers with, in turn, for json-mode requests.
EVIDENCE_CYCLE = ([1, 2], [HUGE], [-3, 1], [FORTY_DIGITS, 2], [2, 3])


class EvidenceServer(FakeOpenAIServer):
    """Answers anchored-QA json requests with fixed evidence lists (ignoring the grammar sent)."""

    def _completion(self, req, key, fault):
        payload = super()._completion(req, key, fault)
        if fault is None and "response_format" in req:
            self.calls = getattr(self, "calls", 0) + 1
            evidence = EVIDENCE_CYCLE[(self.calls - 1) % len(EVIDENCE_CYCLE)]
            payload["choices"][0]["message"]["content"] = json.dumps(
                {
                    "question": f"How many tables are on pages 1 to 3 (item {self.calls})?",
                    "answer": "4",
                    "evidence_pages": evidence,
                    "quality_score": 1,
                }
            )
            self.grammars = getattr(self, "grammars", []) + [req["response_format"]]
        return payload


def test_check_evidence_accepts_shown_pages_only():
    check_evidence([2, 3], [1, 2, 3])
    check_evidence([], [1, 2])  # a not-answerable item may cite nothing
    for bad in ([0], [4], [-1], [HUGE], [FORTY_DIGITS]):
        with pytest.raises(BadEvidence, match="not among the pages shown"):
            check_evidence(bad, [1, 2, 3])


def test_tagged_grammar_names_only_the_pages_shown():
    pattern = tagged_regex([5, 6, 7])
    item = "<question>\nQ?\n</question>\n<answer>3</answer>\n<evidence_pages>[{}]</evidence_pages>\n<quality_score>1</quality_score>"
    assert re.fullmatch(pattern, item.format("5, 7"))
    assert not re.fullmatch(pattern, item.format("5, 8"))
    assert not re.fullmatch(pattern, item.format("70"))
    assert parse_tagged(item.format("7, 5"))["evidence_pages"] == [5, 7]


def test_json_mode_bad_evidence_fails_rows_and_export_succeeds(tmp_path):
    pdfs = real_pdfs()
    assert len(pdfs) >= 1, "sample PDFs missing"
    seed = build_seed(tmp_path / "seed", pdfs[:1], max_pages=3)
    server = EvidenceServer()
    server.start()
    try:
        out = tmp_path / "whole_document_qa" / "00000.parquet"
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 10}
        summary = run_stage(
            "whole_document_qa",
            {"documents": seed["documents"], "pages": seed["pages"]},
            str(out),
            {"output_format": "json", "questions_per_record": 5},
            endpoint,
            1,
            str(tmp_path / ".journal" / "00000.jsonl"),
        )
    finally:
        server.stop()
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["row_id"])
    assert summary["rows"] == 5 and summary["ok"] + summary["failed"] == 5
    failed = [r for r in rows if r["status"] == "failed"]
    ok = [r for r in rows if r["status"] == "ok"]
    # Three of the five lists hold a page that is no page of the three shown.
    assert len(failed) == 3 and {r["failure_reason"] for r in failed} == {"bad_evidence"}
    assert all("not among the pages shown (1-3)" in r["failure_message"] for r in failed)
    assert sorted(json.loads(r["evidence_pages"]) for r in ok) == [[1, 2], [2, 3]]
    # The grammar sent lets the model cite only pages 1-3.
    schema = server.grammars[0]["json_schema"]["schema"]
    assert schema["properties"]["evidence_pages"]["items"]["enum"] == [1, 2, 3]

    # An older shard holding any integer still exports (with evidence checks off).
    run = SyntheticRun(tmp_path / "synthetic")
    stage = "whole_document_qa"
    legacy = [
        make_row(
            stage,
            f"{stage}:d0:q{i}",
            "d0",
            [1, 2, 3, 4],
            question=f"Legacy question {i}?",
            answer="4",
            question_type="numerical_int",
            evidence_pages=json.dumps(pages),
            evidence_ok=True,
            quality_score=1,
            format_ok=True,
        )
        for i, pages in enumerate(([HUGE, 2], [-3], [FORTY_DIGITS], [1, 4]))
    ]
    write_rows(run.results / stage / "00000.parquet", stage, legacy)
    inputs = run.dataset_inputs(stage, judged=False)
    datasets = run.results / "export" / "datasets"
    summary = build_dataset(
        stage,
        inputs,
        str(datasets / f"{stage}.parquet"),
        str(datasets / f"{stage}.summary.json"),
        {"filters": {"require_evidence_ok": False}},
    )
    hub = tmp_path / "hub"
    write_hub({stage: str(datasets / f"{stage}.parquet")}, {stage: summary}, run.seed_files("pages"), str(hub), {})
    exported = [r for f in sorted((hub / stage).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    by_question = {r["question"]: r["evidence_pages"] for r in exported}
    assert by_question["Legacy question 0?"] == [2] and by_question["Legacy question 3?"] == [1, 4]
    assert by_question["Legacy question 1?"] == [] and by_question["Legacy question 2?"] == []
