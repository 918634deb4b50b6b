"""The verify stage through run_stage, against a scripted double of the OpenAI server: the
independent answer never sees the generated one, the extractor runs only for replies without a
well-formed answer, and each score follows the fixed benchmark rules (expected scores by hand)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import require
from helpers.stage_inputs import build_seed, real_pdfs
from longdoc_sdg.stages import run_stage
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

MC_QUESTION = "Which colour is the logo?\nA. red\nB. blue\nC. green\nD. black"
# question type, question, generated answer, the verifier's reply, extractor reply or None, score
CASES = [
    ("numerical_int", "How many rows does Table 1 list?", "12", "I count them.\nAnswer: 12", None, 1.0),
    (
        "numerical_int",
        "What is the total headcount?",
        "1234",
        "The total is 1,234 people.",
        "Extracted answer: 1,234",
        1.0,
    ),
    ("numerical_float", "What is the ratio, to two decimals?", "3.14", "Answer: 3.2", None, 0.0),
    ("not_answerable", "What was the 2031 revenue?", "Not answerable", "Answer: not answerable.", None, 1.0),
    ("string", "Who signed the letter?", "Barack Obama", "**Answer:** Barak Obama", None, 1 - 1 / 12),
    ("multiple_choice", MC_QUESTION, "B. blue", "Answer: B", "Extracted answer: B", 1.0),  # letters agree
    ("list", "Which two regions grew?", '["north", "south"]', 'Answer: ["South", "North"]', None, 1.0),
    ("yes_no", "Did revenue rise?", "Yes", "Answer: Not answerable", None, 0.0),
]


class ScriptedServer(FakeOpenAIServer):
    """TEST DOUBLE: answers the verify prompts from the CASES table and records every prompt."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.prompts: list[str] = []

    def _completion(self, req, key, fault):
        payload = super()._completion(req, key, fault)
        content = req["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        text = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")
        self.prompts.append(text)
        for _, question, _, reply, extracted, _ in CASES:
            if question in text:
                message = extracted if "Extracted answer:" in text else reply
                payload["choices"][0]["message"]["content"] = message
        return payload


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    pdfs = real_pdfs()
    require(len(pdfs) >= 1, "no sample PDFs in resources/sample_pdfs")
    return build_seed(tmp_path_factory.mktemp("seed"), pdfs[:1], max_pages=2)


def qa_shard(path, doc_id: str) -> str:
    rows = []
    for n, (qtype, question, answer, *_) in enumerate(CASES):
        rows.append(
            dict(
                row_id=f"single_page_qa:{doc_id}:p0001:q{n}",
                doc_id=doc_id,
                pages=[1],
                status="ok",
                question_type=qtype,
                question=question,
                answer=answer,
                format_ok=True,
            )
        )
    rows.append(dict(rows[0], row_id="single_page_qa:x:failed", status="failed"))
    rows.append(dict(rows[0], row_id="single_page_qa:x:badformat", format_ok=False))
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_verify_scores_independent_answers(tmp_path, seed):
    doc_id = pq.read_table(seed["pages"], columns=["doc_id"]).column(0)[0].as_py()
    qa = qa_shard(tmp_path / "qa.parquet", doc_id)
    server = ScriptedServer()
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 10}
        out = tmp_path / "verify" / "00000.parquet"
        summary = run_stage(
            "verify", {"qa": qa, "pages": seed["pages"]}, str(out), {}, endpoint, 1, str(tmp_path / "journal.jsonl")
        )
    finally:
        server.stop()
    rows = {r["qa_row_id"]: r for r in pq.read_table(out).to_pylist()}
    # failed and badly formatted QA rows are not verified
    assert summary["rows"] == len(CASES) == len(rows)
    for n, (qtype, question, answer, reply, extracted, score) in enumerate(CASES):
        row = rows[f"single_page_qa:{doc_id}:p0001:q{n}"]
        assert row["status"] == "ok", row
        assert row["row_id"] == f"verify:{row['qa_row_id']}" and row["qa_stage"] == "single_page_qa"
        assert row["verify_reply"] == reply
        assert row["verify_extracted"] is (extracted is not None), question
        assert row["verify_score"] == pytest.approx(score), question
    assert rows[f"single_page_qa:{doc_id}:p0001:q1"]["verify_answer"] == "1,234"
    assert rows[f"single_page_qa:{doc_id}:p0001:q2"]["benchmark_format"] == "Float"
    # answer calls + the two extractor calls, and no prompt shows a generated answer
    assert len(server.prompts) == len(CASES) + 2
    format_words = {"Yes", "Not answerable"}  # in the instructions of every prompt of that kind
    for prompt in server.prompts:
        for _, question, answer, *_ in CASES:
            if question in prompt and answer not in format_words:
                assert not re.search(rf"\b{re.escape(answer)}\b", prompt.replace(question, "")), (answer, prompt)
    not_answerable_prompt = next(p for p in server.prompts if "2031 revenue" in p)
    assert 'exactly "Not answerable"' in not_answerable_prompt  # the same refusal rule for every type
    assert "a word, phrase, number or short sentence" in not_answerable_prompt  # no hint of the type


def test_verify_settings_are_documented():
    from longdoc_sdg.stages import get_stage

    fields = get_stage("verify").config_model.model_fields
    assert fields["extract"].default == "auto" and fields["only_format_ok"].default is True
    assert json.dumps(fields["sampling"].default_factory().to_request()) == '{"temperature": 0.0}'
