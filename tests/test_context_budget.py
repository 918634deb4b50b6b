"""The per-request context budget (engine/budget.py): image-token estimates by model family,
client-side downscaling to fit max_model_len, and `context_too_long` rows that are never sent.
Expectations are computed by hand in the comments."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers.stage_inputs import TaggedFakeServer, build_seed, real_pdfs
from longdoc_sdg.engine.budget import (
    DEFAULT_FAMILY,
    FAMILIES,
    ContextBudget,
    ContextTooLong,
    RequestFitter,
    RowImages,
    TooManyImages,
    VisionFamily,
    budget_for_endpoint,
    message_text_tokens,
    png_size,
    resolve_family,
    row_images,
)
from longdoc_sdg.engine.images import LazyImage
from longdoc_sdg.stages import run_stage

# The tiny test VLM's processor: Qwen2-VL tokens of 28x28 pixels, 3,136 to 200,704 pixels.
TINY = VisionFamily("qwen2-vl", 28, 3136, 200704)
LETTER_144DPI = (1224, 1584)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 255).save(out, format="PNG")
    return out.getvalue()


# -- image tokens by family


def test_page_tokens_by_family():
    # Qwen2.5-VL: 1224/28 = 43.7 -> 44, 1584/28 = 56.6 -> 57 -> 44*57 = 2,508 + 2 markers
    assert FAMILIES["qwen2.5-vl"].image_tokens(*LETTER_144DPI) == 2510
    # Qwen3-VL: 1224/32 = 38.25 -> 38, 1584/32 = 49.5 -> 50 -> 1,900 + 2
    assert FAMILIES["qwen3-vl"].image_tokens(*LETTER_144DPI) == 1902
    # The tiny model caps at 200,704 px: beta = sqrt(1224*1584/200704) = 3.108;
    # 1224/3.108/28 = 14.06 -> 14, 1584/3.108/28 = 18.2 -> 18 -> 252 + 2
    assert TINY.image_tokens(*LETTER_144DPI) == 254
    assert TINY.resized(*LETTER_144DPI) == (392, 504)
    # Below the minimum: 20x40 = 800 px < 3,136: beta = sqrt(3.92) = 1.98;
    # 20*1.98/28 = 1.41 -> 2, 40*1.98/28 = 2.83 -> 3 -> 6 + 2
    assert TINY.image_tokens(20, 40) == 8
    # Encoder-decoder OCR: pages cost no decoder context.
    assert FAMILIES["nemotron-parse"].image_tokens(*LETTER_144DPI) == 0
    # Unknown family: 28-pixel tokens and no cap (as Qwen2.5-VL, the hungriest common layout).
    assert DEFAULT_FAMILY.image_tokens(4000, 4000) == 143 * 143 + 2


@pytest.mark.parametrize(
    "names, family",
    [
        (("Qwen/Qwen3-VL-235B-A22B-Thinking-FP8",), "qwen3-vl"),
        (("Qwen/Qwen3.5-397B-A17B-FP8",), "qwen3-vl"),
        (("Qwen/Qwen2.5-VL-7B-Instruct",), "qwen2.5-vl"),
        (("qwen2_vl_tiny",), "qwen2-vl"),
        (("nvidia/NVIDIA-Nemotron-Parse-v1.1",), "nemotron-parse"),
        (("some/other-model", None, "served-name"), "unknown"),
    ],
)
def test_family_from_names(names, family):
    assert resolve_family(*names).name == family


def test_family_from_a_local_model_directory(tmp_path):
    # What the tiny model's build writes: config.json + processor_config.json (transformers' layout).
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2_vl", "vision_config": {"patch_size": 14, "spatial_merge_size": 2}})
    )
    (tmp_path / "processor_config.json").write_text(
        json.dumps({"image_processor": {"size": {"longest_edge": 200704, "shortest_edge": 3136}}})
    )
    assert resolve_family(str(tmp_path), "tiny-vlm") == TINY
    # The server's --mm-processor-kwargs bound wins over the processor's.
    assert resolve_family(str(tmp_path), mm_processor_kwargs={"max_pixels": 100352}).max_pixels == 100352


def test_budget_limit_from_deployment_and_card():
    card = {"id": "m", "root": "Qwen/Qwen3-VL-30B-A3B-Instruct", "max_model_len": 32768}
    both = budget_for_endpoint(card, {"max_model_len": 16384}, "m", 1000)
    assert (both.max_model_len, both.family.name, both.min_image_pixels) == (16384, "qwen3-vl", 1000)
    assert "deployment" in both.source
    assert budget_for_endpoint(card, {}, "m", 0).max_model_len == 32768
    assert budget_for_endpoint({"id": "m"}, {}, "m", 0).max_model_len is None
    # A server that lists no context length: the configured one (models.ALIAS.endpoint.max_model_len).
    configured = {"fallback_max_model_len": 8000}
    assert budget_for_endpoint({"id": "m"}, configured, "m", 0).max_model_len == 8000
    assert budget_for_endpoint(card, configured, "m", 0).max_model_len == 32768  # the server's own wins


# -- fitting a request


def test_fits_unchanged_when_there_is_room():
    budget = ContextBudget(2000, TINY, 12544)
    fit = budget.fit([LETTER_144DPI] * 4, text=500, max_tokens=400)  # 500 + 4*254 + 400 = 1,916
    assert (fit.sizes, fit.scale, fit.prompt_tokens) == ([LETTER_144DPI] * 4, 1.0, 1516)


def test_downscales_to_the_largest_size_that_fits():
    budget = ContextBudget(2000, TINY, 12544)
    # room = 2000 - 500 - 600 = 900 for 4 images (1,016 at full size): 225 tokens each, a grid of
    # at most 223. 13 x 17 = 221 needs s >= 17*28/1584 = 0.3005; 18 rows (s >= 0.3182) would
    # give 13 x 18 = 234. So 364 x 476 px, 223 tokens each, 892 in all.
    fit = budget.fit([LETTER_144DPI] * 4, text=500, max_tokens=600)
    assert fit.sizes == [(364, 476)] * 4
    assert 0.3005 < fit.scale < 0.3182
    assert fit.prompt_tokens == 500 + 892
    # An image already below the floor is never scaled.
    small = (100, 100)
    assert budget.fit([LETTER_144DPI, small], text=1500, max_tokens=200).sizes[1] == small


def test_too_long_even_at_the_floor():
    budget = ContextBudget(2000, TINY, 12544, "test limit")
    # floor scale sqrt(12544 / (1224*1584)) = 0.0804 -> 98 x 127 px -> 84 x 112: 3*4 + 2 = 14
    # tokens per image; 1,800 text + 4*14 + 400 = 2,256 > 2,000
    with pytest.raises(ContextTooLong) as caught:
        budget.fit([LETTER_144DPI] * 4, text=1800, max_tokens=400)
    assert caught.value.reason == "context_too_long"
    assert "estimated 2,256 tokens" in caught.value.message and "max_model_len 2,000" in caught.value.message
    # Encoder images cannot be made cheaper: only text + max_tokens count, and too much fails.
    ocr = ContextBudget(9000, FAMILIES["nemotron-parse"], 500_000)
    assert ocr.fit([LETTER_144DPI], text=20, max_tokens=8000).scale == 1.0
    with pytest.raises(ContextTooLong):
        ocr.fit([LETTER_144DPI], text=20, max_tokens=9000)


def test_more_images_than_the_deployment_allows_is_not_sent():
    from conftest import REPO
    from longdoc_sdg.engine.budget import deployment_hint
    from longdoc_sdg.serve import load_deployment

    # The shipped CPU deployment sets --limit-mm-per-prompt '{"image": 2}' (a tiny model's budget).
    hint = deployment_hint(load_deployment(REPO / "config" / "deployments" / "tiny-cpu-vlm.yaml", {}))
    assert hint["max_images"] == 2
    budget = budget_for_endpoint({}, {**hint, "max_model_len": None}, "tiny", 0)
    assert budget.fit([LETTER_144DPI] * 2, text=10, max_tokens=10).scale == 1.0
    with pytest.raises(TooManyImages) as caught:
        budget.fit([LETTER_144DPI] * 3, text=10, max_tokens=10)
    assert caught.value.reason == "too_many_images"
    assert "3 images > 2" in caught.value.message and "--limit-mm-per-prompt" in caught.value.message


def test_unknown_limit_checks_nothing():
    fit = ContextBudget(None, TINY).fit([LETTER_144DPI] * 100, text=10**6, max_tokens=10**6)
    assert fit.scale == 1.0


def test_text_estimate_is_an_upper_bound_per_byte():
    messages = [{"role": "user", "content": [{"type": "text", "text": "héllo"}, {"type": "image_url"}]}]
    # 6 UTF-8 bytes + 8 per message + 16 for the generation prompt
    assert message_text_tokens(messages) == 6 + 8 + 16


def test_request_fitter_downscales_the_images_it_sends_and_records_them(tmp_path):
    budget = ContextBudget(2000, TINY, 12544)
    fitter = RequestFitter(budget)
    page = png(*LETTER_144DPI)
    stored = tmp_path / "p00001.png"
    stored.write_bytes(page)
    parts = [
        {"type": "image_url", "image_url": {"url": LazyImage.of(page)}},
        {"type": "image_url", "image_url": {"url": stored.resolve().as_uri()}},
    ]
    text = "x" * (2000 - 300 - 24 - 2 * 120)  # leaves 2 images 120 tokens each
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]
    record = RowImages()
    token = row_images.set(record)
    try:
        found, targets, fit = fitter.plan(messages, max_tokens=300)
        sent = fitter.apply(messages, found, targets)
        fitter.record(fit)
    finally:
        row_images.reset(token)
    assert fit.scale < 1 and all(t is not None for t in targets)
    (w, h) = fit.sizes[0]
    assert w % 28 == 0 and h % 28 == 0 and TINY.image_tokens(w, h) <= 120
    lazy, on_disk = sent[0]["content"][0]["image_url"]["url"], sent[0]["content"][1]["image_url"]["url"]
    assert png_size(lazy.load()) == (w, h)
    copy = Path(on_disk.removeprefix("file://"))
    assert copy.parent == tmp_path and png_size(copy.read_bytes()) == (w, h) and stored.read_bytes() == page
    assert messages[0]["content"][0] is parts[0]  # the caller's messages are left as they were
    assert record.as_columns() == {
        "image_count": 2,
        "image_pixels": w * h,
        "image_scale": round(fit.scale, 4),
        "est_prompt_tokens": fit.prompt_tokens,
    }
    # A second call of the same row reuses the copies.
    again = fitter.apply(messages, *fitter.plan(messages, max_tokens=300)[:2])
    assert again[0]["content"][0]["image_url"]["url"] is lazy


# -- the server's own token count where the byte bound would refuse or shrink a request


class Counter:
    """A stand-in for the engine's count_prompt_tokens: answers `tokens`, counts its calls."""

    def __init__(self, tokens: int | None):
        self.tokens, self.calls = tokens, []

    async def __call__(self, text_only: list[dict]) -> int | None:
        self.calls.append(text_only)
        return self.tokens


def plan_counted(fitter: RequestFitter, messages: list[dict], max_tokens: int, count: Counter):
    import asyncio

    return asyncio.run(fitter.plan_counted(messages, max_tokens, count))


def test_counted_text_lets_a_request_through_that_the_byte_bound_refuses():
    from longdoc_sdg.engine.budget import COUNTED_TEXT_MARGIN_TOKENS

    fitter = RequestFitter(ContextBudget(2000, TINY))
    messages = [{"role": "user", "content": "word " * 600}]  # 3,000 bytes: bound 3,024 > 2,000 - 300
    with pytest.raises(ContextTooLong):
        fitter.plan(messages, max_tokens=300)
    count = Counter(700)
    _, _, fit = plan_counted(fitter, messages, 300, count)
    assert fit.prompt_tokens == 700 + COUNTED_TEXT_MARGIN_TOKENS and fit.scale == 1.0
    assert count.calls == [messages]
    # The row's next call with the same text asks nothing more.
    plan_counted(fitter, messages, 300, count)
    assert len(count.calls) == 1
    # An endpoint without a count: the bound stands.
    with pytest.raises(ContextTooLong):
        plan_counted(RequestFitter(ContextBudget(2000, TINY)), messages, 300, Counter(None))
    # A count that does not fit either is still refused, with the counted estimate.
    with pytest.raises(ContextTooLong, match="estimated 2,016 tokens"):
        plan_counted(RequestFitter(ContextBudget(2000, TINY)), messages, 300, Counter(1700))


def test_counted_text_is_asked_only_when_the_bound_would_change_the_request():
    page = png(*LETTER_144DPI)
    image = {"type": "image_url", "image_url": {"url": LazyImage.of(page)}}
    full = TINY.image_tokens(*LETTER_144DPI)  # over the pixel cap: 14 x 18 = 252 tokens + 2 markers
    text = "x" * 1000
    messages = [{"role": "user", "content": [image, image, {"type": "text", "text": text}]}]
    bound = message_text_tokens(messages)  # 1,024
    # Room for both images at full size beside the bound: nothing is asked.
    count = Counter(100)
    _, targets, fit = plan_counted(RequestFitter(ContextBudget(bound + 2 * full + 300, TINY)), messages, 300, count)
    assert fit.scale == 1.0 and targets == [None, None] and count.calls == []
    # The bound would shrink the images; the count (text only, images taken out) leaves room.
    tight = RequestFitter(ContextBudget(bound + 2 * full + 300 - 200, TINY, 12544))
    assert tight.plan(messages, 300)[2].scale < 1
    _, targets, fit = plan_counted(tight, messages, 300, count)
    assert fit.scale == 1.0 and targets == [None, None]
    assert count.calls == [[{"role": "user", "content": [{"type": "text", "text": text}]}]]


def test_engine_counts_tokens_with_the_servers_tokenizer_or_keeps_the_bound():
    """Against the fake server (a TEST DOUBLE): its made-up tokenizer behind vLLM's /tokenize,
    and the same server without the route."""
    import asyncio

    from longdoc_sdg.engine import ChatEngine
    from longdoc_sdg.engine.config import EndpointConfig
    from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer, FakeServerConfig

    messages = [{"role": "user", "content": [{"type": "text", "text": "abcdefghij"}]}]

    async def count_twice(server) -> list:
        endpoint = EndpointConfig(base_url=server.base_url, model="fake-model", api_key="sk-count-test")
        async with ChatEngine(endpoint) as engine:
            return [await engine.count_prompt_tokens(messages, {"enable_thinking": False}) for _ in range(2)]

    with FakeOpenAIServer(FakeServerConfig(tokenize_bytes_per_token=4, api_key="sk-count-test")) as server:
        assert asyncio.run(count_twice(server)) == [3 + 4 + 3] * 2  # ceil(10 / 4) + a message + the prompt
        assert server.stats()["tokenize_requests"] == 2
    with FakeOpenAIServer(FakeServerConfig(api_key="sk-count-test")) as server:
        assert asyncio.run(count_twice(server)) == [None, None]
        # a 404 is taken as no route: asked once, not for every row
        assert server.stats()["other_requests"] == 1


# -- a stage run against the fake server (a TEST DOUBLE): too long rows are never sent


def test_whole_document_rows_downscaled_or_failed_before_sending(tmp_path):
    pdfs = [p for p in real_pdfs() if __import__("pymupdf").open(p).page_count >= 6][:2]
    if len(pdfs) < 2:
        pytest.skip("needs two PDFs of 6+ pages in resources/sample_pdfs")
    seed = build_seed(tmp_path / "seed", [(pdfs[0], 2), (pdfs[1], 6)], dpi=144)
    inputs = {"documents": seed["documents"], "pages": seed["pages"]}
    pages = pq.read_table(seed["pages"], columns=["doc_id", "width", "height"]).to_pylist()
    full = {}  # image tokens of each document at full size ("fake-model": the unknown family)
    for row in pages:
        full[row["doc_id"]] = full.get(row["doc_id"], 0) + DEFAULT_FAMILY.image_tokens(row["width"], row["height"])
    small_doc, big_doc = pq.read_table(seed["documents"]).column("doc_id").to_pylist()
    server = TaggedFakeServer()
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 10}

        def run(name: str, params: dict) -> dict[str, dict]:
            out = tmp_path / name / "00000.parquet"
            run_stage("whole_document_qa", inputs, str(out), params, endpoint, 1, str(tmp_path / f"{name}.jsonl"))
            return {r["doc_id"]: r for r in pq.read_table(out).to_pylist()}

        # The fake's default limit (262,144) holds both documents as they are.
        roomy = run("roomy", {"max_tokens": 512})
        assert all(r["status"] == "ok" and r["image_scale"] == 1.0 for r in roomy.values())
        text = roomy[small_doc]["est_prompt_tokens"] - full[small_doc]  # the prompt's text estimate
        assert server.stats()["requests"] == 2

        # Room for 0.8 of the small document's images (2 pages); a floor of 40% of a page's area
        # fits its 2 pages (~0.8 of one page's tokens) but not the other's 6 (~2.4 pages' worth).
        page_px = min(r["width"] * r["height"] for r in pages)
        server.configure(max_model_len=text + 512 + int(0.8 * full[small_doc]))
        server.reset_stats()
        tight = run("tight", {"max_tokens": 512, "min_image_pixels": int(0.4 * page_px)})
        stats = server.stats()
    finally:
        server.stop()
    small, big = tight[small_doc], tight[big_doc]
    print({d: (r["status"], r["failure_reason"], r["image_scale"], r["est_prompt_tokens"]) for d, r in tight.items()})
    assert small["status"] == "ok" and 0.4 < small["image_scale"] < 1 and small["image_count"] == 2
    assert small["image_pixels"] < page_px and small["est_prompt_tokens"] <= text + int(0.8 * full[small_doc])
    assert big["status"] == "failed" and big["failure_reason"] == "context_too_long", big
    assert "max_model_len" in big["failure_message"] and "not sent" in big["failure_message"]
    assert big["prompt_tokens"] == 0 and big["image_count"] == 0 and big["image_pixels"] is None
    # Only the small document's request reached the server.
    assert stats["requests"] == 1

    # The report shows the resolution sent: one row per stage in the stats and the summary page.
    from longdoc_sdg.report.figures import summary_html
    from longdoc_sdg.report.stats import compute_stats

    report = compute_stats({"whole_document_qa": [str(tmp_path / "tight" / "00000.parquet")]})
    (resolution,) = report["tables"]["image_resolution"]
    assert resolution == {
        "stage": "whole_document_qa",
        "rows": 2,
        "rows_with_images": 1,
        "downscaled_rows": 1,
        "context_too_long": 1,
        "median_image_pixels": small["image_pixels"],
        "min_image_pixels": small["image_pixels"],
        "mean_image_scale": small["image_scale"],
        "min_image_scale": small["image_scale"],
        "max_est_prompt_tokens": max(small["est_prompt_tokens"], big["est_prompt_tokens"]),
    }
    page = summary_html(report)
    assert "Image resolution sent per stage" in page and f"{small['image_pixels']:,}" in page


def test_served_deployment_sets_the_limit_and_pixel_bounds():
    from conftest import REPO
    from longdoc_sdg.engine.budget import deployment_hint
    from longdoc_sdg.serve import load_deployment

    args = ["--limit-mm-per-prompt", '{"video": 0}', "--mm-processor-kwargs", '{"max_pixels": 1003520}']
    path = REPO / "config" / "deployments" / "qwen3-vl-235b-thinking.yaml"
    hint = deployment_hint(load_deployment(path, {"extra_args": args}))
    assert hint == {
        "max_model_len": 50000,
        "model": "Qwen/Qwen3-VL-235B-A22B-Thinking-FP8",
        "mm_processor_kwargs": {"max_pixels": 1003520},
        "max_images": None,  # {"video": 0} limits videos only
    }
    # The card of a server started without --max-model-len would list the model's own 262,144.
    card = {"id": hint["model"], "root": hint["model"], "max_model_len": 262144}
    budget = budget_for_endpoint(card, hint, hint["model"], 500_000)
    assert budget.max_model_len == 50000 and budget.family.max_pixels == 1003520
    # 1224 x 1584 px = 1.93 x the cap: beta = 1.38997; 1224/1.39/32 = 27.5 -> 27,
    # 1584/1.39/32 = 35.6 -> 35: 27*35 + 2 tokens
    assert budget.family.image_tokens(*LETTER_144DPI) == 947


def test_every_row_too_long_fails_the_job_naming_the_settings(tmp_path):
    from longdoc_sdg.engine.errors import AllRowsFailed

    pdfs = real_pdfs()
    if not pdfs:
        pytest.skip("needs a PDF in resources/sample_pdfs")
    seed = build_seed(tmp_path / "seed", pdfs[:1], max_pages=4)
    server = TaggedFakeServer(max_model_len=4096)
    server.start()
    try:
        endpoint = {"base_url": server.base_url, "model": "fake-model", "request_timeout_s": 10}
        journal = tmp_path / "j.jsonl"
        out = tmp_path / "single_page_qa" / "00000.parquet"
        # The default max_tokens (16,384) alone is over the 4,096 the endpoint lists.
        with pytest.raises(AllRowsFailed, match="context_too_long: .*stages.single_page_qa.settings.max_tokens"):
            run_stage("single_page_qa", {"pages": seed["pages"]}, str(out), {}, endpoint, 1, str(journal))
        assert server.stats()["requests"] == 0
    finally:
        server.stop()
    lines = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert len(lines) == 4 and {r["failure_reason"] for r in lines} == {"context_too_long"}  # kept in the journal


def test_manual_endpoint_passes_its_configured_context_length():
    from longdoc_sdg.config import default_config
    from longdoc_sdg.endpoints import resolve_endpoint

    config = default_config()
    config["models"]["judge"] = {
        "endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None, "max_model_len": 8000}
    }
    endpoint = resolve_endpoint({"mode": "manual", "model": "m"}, config, "judge")
    assert endpoint["context"] == {"fallback_max_model_len": 8000}
    assert budget_for_endpoint({"id": "m"}, endpoint["context"], "m", 0).max_model_len == 8000
