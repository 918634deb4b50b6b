"""The workflow against a REAL vLLM (CPU build, tiny random-weight VLM built by the test): the
session's one server (conftest.tiny_vllm), served at a small max_model_len.

Its text is noise: these tests assert shapes, schema validity, usage and row accounting, never
wording. Stages 02-09 end to end with manual endpoints (judge key from an env var), evaluate,
verify, Nemotron-Parse OCR requests and the context budget against the same server. The
workflow serving the deployment itself, locally and under Slurm: test_workflow_vllm_replicas.py
(two replicas, one killed)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, TINY_VLLM_KEY, TINY_VLLM_SERVED
from helpers.vllm_config import (
    NO_THINKING,
    base_config,
    shortest_pdfs,
    tiny_model_stage_settings,
)
from helpers.workflow import snakemake_cmd
from longdoc_sdg.engine.errors import INFRA_REASONS
from longdoc_sdg.registry import get_spec, model_stages, qa_stages

QA_STAGES = qa_stages()
# Stages with one output per shard (judge and verify: one per QA stage and shard).
MODEL_STAGES = tuple(s for s in model_stages() if not get_spec(s).per_qa_stage)

pytestmark = [pytest.mark.vllm, pytest.mark.workflow]

VLLM_KEY = TINY_VLLM_KEY
SERVED = TINY_VLLM_SERVED


def run(workdir: Path, *args: str, env=None, timeout=1800) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *args, cores=None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def vllm_endpoint(tiny_vllm) -> str:
    return tiny_vllm.base_url


def test_stages_02_to_09_against_real_vllm(vllm_endpoint, real_pdfs, tmp_path):
    """One real document (the shortest, two pages): one shard, every stage's rows answered or
    failed for a reason, each model stage with answered rows and the judge over each QA stage."""
    config = base_config(tmp_path, shortest_pdfs(real_pdfs, 1))
    config["models"] = {
        "tiny": {"endpoint": {"base_url": vllm_endpoint, "model": SERVED, "api_key_env": "LONGDOC_TEST_LLM_KEY"}}
    }
    config["stages"] = {
        stage: {"model": "tiny", "settings": settings} for stage, settings in tiny_model_stage_settings().items()
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "LONGDOC_TEST_LLM_KEY": VLLM_KEY}

    result = run(tmp_path, "--cores", "2", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]

    results = tmp_path / "results"
    outcomes: dict[str, int] = {}
    reasons: dict = {}
    tokens: dict[str, list] = {}
    shards = sorted(p.name for p in (results / "seed").iterdir() if p.is_dir())
    assert shards == ["00000"], shards
    for shard in shards:
        pages = pq.read_table(results / "seed" / shard / "pages.parquet", columns=["doc_id"]).num_rows
        for stage in MODEL_STAGES:
            table = pq.read_table(results / stage / f"{shard}.parquet")
            ids = table.column("row_id").to_pylist()
            assert len(ids) == len(set(ids)) and table.num_rows > 0, f"{stage}/{shard}"
            rows = table.to_pylist()
            assert all(r["status"] in ("ok", "failed") for r in rows)
            assert all(r["failure_reason"] for r in rows if r["status"] == "failed")
            if stage == "ocr":
                assert table.num_rows == pages
            # Requests really reached the model: token usage is recorded on answered rows.
            answered = [r for r in rows if r["status"] == "ok"]
            if stage != "ocr":  # ocr reads the PDF text layer here
                assert all(r["model"] == SERVED for r in answered)
                assert all(r["prompt_tokens"] > 0 for r in answered)
            outcomes[stage] = outcomes.get(stage, 0) + len(answered)
            tokens[stage] = [(r["prompt_tokens"], r["completion_tokens"]) for r in answered]
            for r in rows:
                if r["status"] == "failed":
                    reasons[(stage, r["failure_reason"])] = r["failure_message"][:300]
        for qa_stage in QA_STAGES:
            qa = pq.read_table(results / qa_stage / f"{shard}.parquet").to_pylist()
            judged = pq.read_table(results / "judge" / qa_stage / f"{shard}.parquet").to_pylist()
            assert len(judged) == sum(1 for r in qa if r["status"] == "ok")
            for row in judged:
                if row["status"] == "ok":
                    assert 0 <= row["weighted_quality_score"] <= 1
    # Constrained replies of a grammar-enforcing server parse: every model stage has ok rows.
    print("ok rows per stage:", outcomes, "failure reasons:", reasons, "(prompt, completion) tokens:", tokens)
    assert all(outcomes[stage] > 0 for stage in MODEL_STAGES), str(outcomes)
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and VLLM_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_evaluate_against_real_vllm(vllm_endpoint, tmp_path, monkeypatch, capsys):
    """The benchmark fixture (3 sample PDFs, 10 questions) answered by the real server: every
    sample is accounted for, and results.json re-scores to the same aggregates."""
    import json

    from conftest import SAMPLE_PDF_DIR
    from longdoc_sdg.cli import main as cli_main
    from longdoc_sdg.evaluate import run_evaluation

    monkeypatch.setenv("LONGDOC_TEST_LLM_KEY", VLLM_KEY)
    endpoint = {"base_url": vllm_endpoint, "model": SERVED, "api_key_env": "LONGDOC_TEST_LLM_KEY"}
    # The grammar makes the random model's replies end (else every row is a 'length' failure).
    params = {
        "max_images": 2,
        "max_tokens": 128,
        "extract_max_tokens": 128,
        "constrain_output": True,
        "sampling": {"extra_body": NO_THINKING},
    }
    samples = REPO / "tests" / "data" / "evaluate" / "samples.json"
    scores = run_evaluation(str(samples), str(SAMPLE_PDF_DIR), str(tmp_path / "out"), endpoint, params, {"dpi": 40})
    assert scores["samples"] == 10 == scores["answered"] + scores["failed"]
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == scores["failed"] and all(f["reason"] for f in failures)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == scores["answered"]
    if results:
        assert all(isinstance(r["pred"], str) and r["response"] is not None for r in results)
        for mode in ("official", "fixed"):
            capsys.readouterr()
            assert cli_main(["score", str(tmp_path / "out" / "results.json"), "--mode", mode]) == 0
            assert json.loads(capsys.readouterr().out) == scores[mode]
    assert (tmp_path / "out" / "report.html").exists()


def test_verify_stage_against_real_vllm(vllm_endpoint, tmp_path, monkeypatch):
    """Anchored QA from the real server, then verify over its rows: every eligible QA row gets
    one verify row (ok with a score in [0, 1], or failed with a reason); the scores are noise."""
    from conftest import SAMPLE_PDF_DIR
    from helpers.stage_inputs import build_seed
    from longdoc_sdg.stages import run_stage

    monkeypatch.setenv("LONGDOC_TEST_LLM_KEY", VLLM_KEY)
    endpoint = {"base_url": vllm_endpoint, "model": SERVED, "api_key_env": "LONGDOC_TEST_LLM_KEY"}
    seed = build_seed(tmp_path / "seed", sorted(SAMPLE_PDF_DIR.glob("*.pdf"))[:1], max_pages=2)
    qa = tmp_path / "single_page_qa" / "00000.parquet"
    settings = tiny_model_stage_settings()["single_page_qa"]
    run_stage("single_page_qa", {"pages": seed["pages"]}, str(qa), settings, endpoint, 1, str(tmp_path / "j1.jsonl"))
    out = tmp_path / "verify" / "single_page_qa" / "00000.parquet"
    params = {
        "max_tokens": 128,
        "extract_max_tokens": 128,
        "constrain_output": True,
        "only_format_ok": False,
        "sampling": {"extra_body": NO_THINKING},
    }
    summary = run_stage(
        "verify", {"qa": str(qa), "pages": seed["pages"]}, str(out), params, endpoint, 1, str(tmp_path / "j2.jsonl")
    )
    qa_rows = pq.read_table(qa).to_pylist()
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["qa_row_id"] for r in rows if r["status"] == "ok") == sorted(
        r["row_id"] for r in qa_rows if r["status"] == "ok" and r["row_id"] in {v["qa_row_id"] for v in rows}
    )
    assert summary["rows"] == len(rows) == sum(r["status"] == "ok" for r in qa_rows)
    assert {r["row_id"] for r in rows} == {f"verify:{r['row_id']}" for r in qa_rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok":
            assert 0.0 <= r["verify_score"] <= 1.0 and r["benchmark_format"] in ("Int", "Float", "Str", "None", "List")
        else:
            assert r["failure_reason"]


def test_nemotron_parse_ocr_requests_against_real_vllm(vllm_endpoint, tmp_path, monkeypatch):
    """OCR with the nemotron-parse engine sends its request format (one page image, its prompt)
    to the real server: every page is one row, each request was accepted (the random model's
    markup may still fail our parsing, never as a bad or refused request)."""
    from conftest import SAMPLE_PDF_DIR
    from helpers.stage_inputs import build_seed
    from longdoc_sdg.stages import run_stage

    monkeypatch.setenv("LONGDOC_TEST_LLM_KEY", VLLM_KEY)
    endpoint = {"base_url": vllm_endpoint, "model": SERVED, "api_key_env": "LONGDOC_TEST_LLM_KEY"}
    seed = build_seed(tmp_path / "seed", sorted(SAMPLE_PDF_DIR.glob("*.pdf"))[:1], max_pages=2)
    out = tmp_path / "ocr" / "00000.parquet"
    params = {"engine": "nemotron-parse", "max_tokens": 64}
    run_stage("ocr", {"pages": seed["pages"]}, str(out), params, endpoint, 1, str(tmp_path / "ocr.jsonl"))
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == pq.read_metadata(seed["pages"]).num_rows == 2
    # The server counted each page's prompt and answered it.
    assert all(r["model"] == SERVED and r["prompt_tokens"] > 0 and r["image_count"] == 1 for r in rows), rows
    assert all(r["ocr_engine"] == "nemotron-parse" for r in rows if r["status"] == "ok"), rows
    failed = [r for r in rows if r["status"] == "failed"]
    assert all(r["failure_reason"] not in ("bad_request", *INFRA_REASONS) for r in failed), failed


def _vllm_counters(base_url: str) -> dict[str, float]:
    """Finished requests and prompt tokens so far, from the server's Prometheus /metrics."""
    import urllib.request

    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    totals = {"vllm:request_success_total": 0.0, "vllm:prompt_tokens_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals and f'model_name="{SERVED}"' in line:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def test_context_budget_against_real_vllm(tiny_vllm, tmp_path, monkeypatch):
    """Whole-document QA against the real server served at a small max_model_len (listed by its
    /v1/models, where the budget reads it): with a realistic max_tokens, an 8-page document at 144 dpi
    would overflow it at full size and is downscaled and answered; a 24-page one cannot fit even
    at the floor and becomes a context_too_long row that never reaches the server (its counters
    move by one request)."""
    from conftest import SAMPLE_PDF_DIR
    from helpers.stage_inputs import build_seed
    from longdoc_sdg.engine.budget import COUNTED_TEXT_MARGIN_TOKENS, ContextBudget, resolve_family
    from longdoc_sdg.stages import run_stage

    monkeypatch.setenv("LONGDOC_TEST_LLM_KEY", VLLM_KEY)
    endpoint = {"base_url": tiny_vllm.base_url, "model": SERVED, "api_key_env": "LONGDOC_TEST_LLM_KEY"}
    limit = tiny_vllm.max_model_len
    family = resolve_family(str(tiny_vllm.model_dir))
    assert (family.name, family.pixels_per_token_side, family.max_pixels) == ("qwen2-vl", 28, 28 * 28 * 256)
    small_pdf, big_pdf = SAMPLE_PDF_DIR / "residual-shadings.pdf", SAMPLE_PDF_DIR / "zoo.pdf"
    seed = build_seed(tmp_path / "seed", [(small_pdf, 8), (big_pdf, 24)], dpi=144)
    inputs = {"documents": seed["documents"], "pages": seed["pages"]}
    pages = pq.read_table(seed["pages"], columns=["doc_id", "width", "height"]).to_pylist()
    small_doc, big_doc = pq.read_table(seed["documents"]).column("doc_id").to_pylist()
    full = {
        d: sum(family.image_tokens(p["width"], p["height"]) for p in pages if p["doc_id"] == d)
        for d in (small_doc, big_doc)
    }
    params = {
        "output_format": "json",
        "num_records": None,
        "sampling": {"extra_body": NO_THINKING},
        "min_image_pixels": 28 * 28 * 81,
    }

    def run(name: str, max_tokens: int) -> dict[str, dict]:
        out = tmp_path / name / "00000.parquet"
        run_stage(
            "whole_document_qa",
            inputs,
            str(out),
            {**params, "max_tokens": max_tokens},
            endpoint,
            1,
            str(tmp_path / f"{name}.jsonl"),
        )
        return {r["doc_id"]: r for r in pq.read_table(out).to_pylist()}

    # 1) A short reply leaves room: the small document goes at full size.
    probe = run("probe", 16)
    assert probe[small_doc]["image_scale"] == 1.0, probe[small_doc]
    # The estimate is an upper bound of what the real server counted.
    assert 0 < probe[small_doc]["prompt_tokens"] <= probe[small_doc]["est_prompt_tokens"]
    # Once images must shrink, the budget has the server count the text (its /tokenize): the
    # server's prompt less the images (their estimate is exact, below), plus the margin.
    text = probe[small_doc]["prompt_tokens"] - full[small_doc] + COUNTED_TEXT_MARGIN_TOKENS

    # 2) A max_tokens where the small document fits only downscaled and the big one not even at
    # the floor (its prompt text is no shorter than the small one's).
    floor = ContextBudget(limit, family, params["min_image_pixels"])

    def floor_tokens(doc: str) -> int:
        return sum(
            family.image_tokens(*floor.floor_size((p["width"], p["height"]))) for p in pages if p["doc_id"] == doc
        )

    max_tokens = limit - text - (full[small_doc] + floor_tokens(small_doc)) // 2
    assert max_tokens > 1000, max_tokens  # a realistic reply budget, not a sliver
    assert text + full[small_doc] + max_tokens > limit >= text + floor_tokens(small_doc) + max_tokens
    assert text + floor_tokens(big_doc) + max_tokens > limit, "the big document must not fit at the floor"
    before = _vllm_counters(tiny_vllm.base_url)
    tight = run("tight", max_tokens)
    small, big = tight[small_doc], tight[big_doc]
    print(
        {
            d: (
                r["status"],
                r["failure_reason"],
                r["image_scale"],
                r["image_pixels"],
                r["est_prompt_tokens"],
                r["prompt_tokens"],
            )
            for d, r in tight.items()
        }
    )
    # Downscaled and answered (HTTP 200: the server counted its prompt; a random model's reply
    # may still fail our checks), within the estimate.
    assert 0 < small["image_scale"] < 1 and small["image_count"] == 8
    assert small["failure_reason"] not in ("context_too_long", "bad_request"), small
    assert 0 < small["prompt_tokens"] <= small["est_prompt_tokens"] <= limit - max_tokens
    assert small["image_pixels"] < min(p["width"] * p["height"] for p in pages if p["doc_id"] == small_doc)
    assert big["failure_reason"] == "context_too_long" and "not sent" in big["failure_message"], big
    # The limit is the one the server lists, not a setting of the test.
    assert f"max_model_len {limit:,} (max_model_len listed by /v1/models" in big["failure_message"], big
    assert big["prompt_tokens"] == 0 and big["image_count"] == 0
    # The server saw exactly one request, the small document's.
    after = before
    for _ in range(60):  # a bounded wait for the counters to be published, not a timing check
        after = _vllm_counters(tiny_vllm.base_url)
        if after["vllm:request_success_total"] > before["vllm:request_success_total"]:
            break
        time.sleep(0.5)
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 1
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == small["prompt_tokens"]

    # The image-token estimate is exact for this family: what one image adds to the server's
    # prompt count, for a page over the processor's pixel cap, one under it, and a downscaled
    # size on the 28-pixel token grid.
    for size in ((1224, 1584), (300, 200), (364, 476)):
        assert _image_prompt_tokens(tiny_vllm.base_url, size) == family.image_tokens(*size), size


def test_text_counted_by_the_real_servers_tokenizer(tiny_vllm, real_pdfs):
    """A text request the budget's byte bound says cannot fit: the real server's /tokenize counts
    it, and it is sent and answered, its estimate within the margin above what the server counted
    for the prompt. Without the count the same request is refused unsent."""
    import asyncio

    import pymupdf

    from longdoc_sdg.engine import ChatEngine
    from longdoc_sdg.engine.budget import (
        COUNTED_TEXT_MARGIN_TOKENS,
        ContextTooLong,
        RequestFitter,
        RowImages,
        budget_for_endpoint,
        message_text_tokens,
        row_images,
    )
    from longdoc_sdg.engine.config import EndpointConfig
    from longdoc_sdg.stages.base import RowCalls

    # Prose from real documents: the tiny model's byte-level BPE merges it below a token a byte.
    text = ""
    for pdf in real_pdfs:
        with pymupdf.open(pdf) as doc:
            text += "".join(page.get_text() for page in doc)
        if len(text) > 5000:
            break
    messages = [{"role": "user", "content": [{"type": "text", "text": "Summarise:\n" + text[:5000]}]}]
    bound = message_text_tokens(messages)
    limit = tiny_vllm.max_model_len
    # Stop strings end the random model's reply early; only the prompt is under test.
    sampling = {**NO_THINKING, "temperature": 0.0, "stop": ["e", "t", " ", "\n"]}

    async def main():
        endpoint = EndpointConfig(base_url=tiny_vllm.base_url, model=SERVED, api_key=VLLM_KEY)
        async with ChatEngine(endpoint) as engine:
            budget = budget_for_endpoint(await engine.verify(), None, SERVED, 0)
            counted = await engine.count_prompt_tokens(messages, NO_THINKING["chat_template_kwargs"])
            assert counted is not None and bound - counted > 4 * COUNTED_TEXT_MARGIN_TOKENS, (bound, counted)
            # max_tokens so large that the bound overflows the context by half of what it overstates
            max_tokens = limit - bound + (bound - counted) // 2
            with pytest.raises(ContextTooLong):
                RequestFitter(budget).plan(messages, max_tokens)
            record = RowImages()
            token = row_images.set(record)
            try:
                result = await RowCalls(engine, budget).chat(messages, sampling=sampling, max_tokens=max_tokens)
            finally:
                row_images.reset(token)
            return counted, max_tokens, record, result

    counted, max_tokens, record, result = asyncio.run(main())
    print({"bound": bound, "counted": counted, "max_tokens": max_tokens, "usage": result.usage})
    prompt = result.usage.prompt_tokens
    assert prompt == counted  # text only: the count is the server's prompt, chat template and all
    assert record.prompt_tokens == counted + COUNTED_TEXT_MARGIN_TOKENS <= limit - max_tokens


def _image_prompt_tokens(base_url: str, size: tuple[int, int]) -> int:
    """Prompt tokens one image of `size` adds to a one-line request on the real server."""
    import base64
    import io
    import json
    import urllib.request

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 200, 200)).save(buffer, format="PNG")
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()},
    }

    def prompt_tokens(parts: list[dict]) -> int:
        body = {"model": SERVED, "messages": [{"role": "user", "content": parts}], "max_tokens": 1, **NO_THINKING}
        request = urllib.request.Request(
            base_url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {VLLM_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())["usage"]["prompt_tokens"]

    text = {"type": "text", "text": "Describe it."}
    return prompt_tokens([image, text]) - prompt_tokens([text])
