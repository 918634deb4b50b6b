"""ChatEngine against the fake OpenAI server: retries, error classes, parsing, usage, secrets."""

import asyncio
import logging
import socket
import sys
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field, SecretStr

from longdoc_sdg import io as lio
from longdoc_sdg.engine import (
    ChatEngine,
    ConcurrencyConfig,
    EndpointConfig,
    EndpointError,
    RecordError,
    RetryConfig,
    closed_schema,
    image_part,
)
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

TRANSPORTS = ["aiohttp", "openai"]
FAST_RETRY = RetryConfig(max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.05)


class Answer(BaseModel):
    question: str
    answer: str
    kind: Literal["yes_no", "number", "text"]
    score: int = Field(ge=0, le=2)


class Item(BaseModel):
    label: str
    weight: Optional[float] = None


class Nested(BaseModel):
    items: list[Item]
    lookup: dict[str, int]
    best: Item


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def fake(server):
    server.reset()
    return server


def engine_for(server, transport="aiohttp", model="fake-model", key=None, timeout=10.0, retry=FAST_RETRY, **kw):
    endpoint = EndpointConfig(
        base_url=server.base_url, model=model, api_key=SecretStr(key) if key else None, request_timeout_s=timeout
    )
    return ChatEngine(endpoint, retry=retry, transport=transport, **kw)


def run(coro):
    return asyncio.run(coro)


async def chat_once(engine, text, **kw):
    async with engine:
        return await engine.chat([{"role": "user", "content": text}], **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_config_normalises_base_url():
    assert EndpointConfig(base_url="http://h:8000", model="m").base_url == "http://h:8000/v1"
    assert EndpointConfig(base_url="http://h:8000/v1/", model="m").base_url == "http://h:8000/v1"
    with pytest.raises(ValueError):
        EndpointConfig(base_url="h:8000", model="m")


def test_closed_schema_everywhere():
    schema = closed_schema(Nested)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node:
                assert node["additionalProperties"] is False
                assert set(node["required"]) == set(node["properties"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert schema["$defs"]["Item"]["required"] == ["label", "weight"]
    # a typed map keeps its value schema
    assert schema["properties"]["lookup"]["additionalProperties"] == {"type": "integer"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_verify_and_structured_chat(fake, transport):
    async def go():
        async with engine_for(fake, transport) as engine:
            card = await engine.verify()
            result = await engine.chat([{"role": "user", "content": "q"}], response_model=Answer, max_tokens=64)
            return card, result

    card, result = run(go())
    assert card["id"] == "fake-model"
    assert isinstance(result.parsed, Answer)
    assert result.finish_reason == "stop" and result.attempts == 1
    assert result.completion.choices[0].message.content == result.content


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_verify_unknown_model_names_endpoint_and_model(fake, transport):
    with pytest.raises(EndpointError) as err:
        run(engine_for(fake, transport, model="no-such-model").verify())
    assert fake.base_url in str(err.value) and "no-such-model" in str(err.value)
    assert "fake-model" in str(err.value)  # lists what is served


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_endpoint_fails_fast(transport):
    endpoint = EndpointConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m1")
    with pytest.raises(EndpointError) as err:
        run(ChatEngine(endpoint, retry=FAST_RETRY, transport=transport).verify())
    assert endpoint.base_url in str(err.value) and "m1" in str(err.value)

    # The default policy's attempts, with its back-off shortened (the default's waits are summed below).
    retry = RetryConfig(backoff_initial_s=0.01, backoff_max_s=0.05)

    async def chat():
        async with ChatEngine(endpoint, retry=retry, transport=transport) as engine:
            await engine.chat([{"role": "user", "content": "x"}])

    with pytest.raises(EndpointError) as err:
        run(chat())
    assert "unreachable" in str(err.value) and endpoint.base_url in str(err.value)
    assert f"after {RetryConfig().max_attempts} attempts" in str(err.value)
    # With the default policy the job gives up after at most 0.5 + 1 + 2 + 4 s of back-off.
    default = RetryConfig()
    assert sum(default.delay(attempt, 1.0) for attempt in range(1, default.max_attempts)) == pytest.approx(7.5)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fault", ["500", "502", "503", "reset", "malformed_body"])
def test_transient_faults_are_retried(fake, transport, fault):
    result = run(chat_once(engine_for(fake, transport), f"x [[fake:{fault}*2]]"))
    assert result.attempts == 3 and result.content
    assert fake.stats()["requests"] == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeout_is_retried_then_reported(fake, transport):
    fake.configure(hang_s=5)
    result = run(chat_once(engine_for(fake, transport, timeout=0.4), "x [[fake:timeout*1]]"))
    assert result.attempts == 2
    assert fake.stats()["outcomes"] == {"timeout": 1, "ok": 1}
    engine = engine_for(fake, transport, timeout=0.3, retry=RetryConfig(max_attempts=2, backoff_initial_s=0.01))
    with pytest.raises(RecordError) as err:
        run(chat_once(engine, "y [[fake:timeout*9]]"))
    assert err.value.reason == "timeout" and err.value.infrastructure
    assert engine.limiter.decreases >= 1  # timeouts shrink the concurrency


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_persistent_5xx_becomes_infrastructure_failure(fake, transport):
    engine = engine_for(fake, transport)
    with pytest.raises(RecordError) as err:
        run(chat_once(engine, "x [[fake:503*99]]"))
    assert err.value.reason == "server_error" and err.value.infrastructure
    assert fake.stats()["requests"] == FAST_RETRY.max_attempts


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_400_is_not_retried(fake, transport):
    with pytest.raises(RecordError) as err:
        run(chat_once(engine_for(fake, transport), "x [[fake:400]]"))
    assert err.value.reason == "bad_request" and "maximum context length" in err.value.message
    assert fake.stats()["requests"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_model_404_fails_job_at_once(fake, transport):
    engine = engine_for(fake, transport, model="ghost")

    async def go():
        async with engine:
            with pytest.raises(EndpointError) as first:
                await engine.chat([{"role": "user", "content": "x"}])
            with pytest.raises(EndpointError):
                await engine.chat([{"role": "user", "content": "y"}])  # no new request
            return first.value

    error = run(go())
    assert "ghost" in str(error) and fake.base_url in str(error)
    assert "models.ALIAS.endpoint.model" in str(error)  # the setting to change
    assert fake.stats()["requests"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "fault, reason",
    [
        ("length", "length"),
        ("reasoning_only", "reasoning_only"),
        ("invalid_json", "invalid_json"),
        ("schema_invalid", "schema_invalid"),
    ],
)
def test_content_failures(fake, transport, fault, reason):
    engine = engine_for(fake, transport)
    with pytest.raises(RecordError) as err:
        run(chat_once(engine, f"x [[fake:{fault}]]", response_model=Answer, max_tokens=50))
    assert err.value.reason == reason and not err.value.infrastructure
    assert err.value.usage.completion_tokens > 0  # a failed reply still costs tokens
    assert engine.usage.requests == 1 and fake.stats()["requests"] == 1  # never retried


def test_raw_control_characters_are_invalid_json():
    from longdoc_sdg.engine import parse_reply

    with pytest.raises(RecordError) as err:
        parse_reply(Item, '{"label": "a\x01b", "weight": null}')
    assert err.value.reason == "invalid_json"
    with pytest.raises(RecordError) as err:
        parse_reply(Item, '{"label": "a", "weight": null, "extra": 1}')
    assert err.value.reason == "schema_invalid"


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_captured(fake, field):
    fake.configure(reasoning=True, reasoning_field=field)
    result = run(chat_once(engine_for(fake), "think"))
    assert result.reasoning.startswith("Let me think.")
    assert result.usage.reasoning_tokens > 0 and result.content


def test_usage_summed(fake):
    fake.configure(reasoning=True)

    async def go():
        async with engine_for(fake) as engine:
            results = await asyncio.gather(*(engine.chat([{"role": "user", "content": f"q{i}"}]) for i in range(7)))
            return engine, results

    engine, results = run(go())
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
        assert getattr(engine.usage, name) == sum(getattr(r.usage, name) for r in results) > 0
    assert engine.usage.requests == 7


def test_sampling_and_extra_body_reach_the_request(fake):
    engine = engine_for(fake)
    body = engine.build_body(
        [{"role": "user", "content": "x"}],
        Answer,
        {"temperature": 0.3, "seed": 7},
        99,
        {"chat_template_kwargs": {"enable_thinking": False}, "top_k": 20},
    )
    assert body["temperature"] == 0.3 and body["seed"] == 7 and body["max_tokens"] == 99
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["response_format"]["json_schema"]["schema"]["additionalProperties"] is False


def test_image_parts(fake, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    part = image_part(png)
    assert part["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    path = tmp_path / "page.png"
    path.write_bytes(png)
    assert image_part(path, mode="file")["image_url"]["url"] == path.resolve().as_uri()
    assert image_part(str(path))["image_url"]["url"] == part["image_url"]["url"]
    with pytest.raises(ValueError):
        image_part(png, mode="file")
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "describe"}]}]

    async def go():
        async with engine_for(fake) as engine:
            return await engine.chat(messages)

    assert run(go()).usage.prompt_tokens >= 256


def test_wrong_key_is_endpoint_error_and_key_never_logged(server, tmp_path, monkeypatch):
    secret = "sk-test-SECRET-4f9a1c"
    server.reset(api_key=secret, faults={"503": 0.3, "length": 0.2, "400": 0.1}, seed=1)
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # setup_job_logging redirects stderr
    log_file = tmp_path / "job.log"
    logger = lio.setup_job_logging(log_file, level=logging.DEBUG)
    raw: list[str] = []

    class Capture(logging.Filter):  # sees messages before any redaction
        def filter(self, record):
            raw.append(record.getMessage())
            return True

    capture = Capture()
    for name in ("longdoc_sdg.engine", "longdoc_sdg.engine.runner", "longdoc_sdg"):
        logging.getLogger(name).addFilter(capture)
    try:

        async def good():
            async with engine_for(server, key=secret) as engine:
                await engine.verify()
                for i in range(20):
                    try:
                        await engine.chat([{"role": "user", "content": f"q{i}"}], max_tokens=20)
                    except RecordError as exc:
                        logger.info("row failed: %s", exc)
                logger.info("stats %s endpoint %r", engine.stats(), engine.endpoint)

        run(good())
        with pytest.raises(EndpointError) as err:
            run(engine_for(server, key="sk-wrong-key-XYZ").verify())
        assert "rejected the API key" in str(err.value) and "sk-wrong" not in str(err.value)
        with pytest.raises(EndpointError) as err:
            run(chat_once(engine_for(server, key="sk-wrong-key-XYZ"), "x"))
        assert "sk-wrong" not in str(err.value)
    finally:
        for name in ("longdoc_sdg.engine", "longdoc_sdg.engine.runner", "longdoc_sdg"):
            logging.getLogger(name).removeFilter(capture)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    text = log_file.read_text()
    assert "retry" in text and "rejected the API key" in text  # the log did get written
    assert secret not in text and "sk-wrong-key-XYZ" not in text
    assert not any(secret in line or "sk-wrong-key-XYZ" in line for line in raw)


def test_concurrency_never_exceeds_limit(server):
    server.reset(latency_s=0.05)
    engine = engine_for(server, concurrency=ConcurrencyConfig(min=1, max=5))

    async def go():
        async with engine:
            await asyncio.gather(*(engine.chat([{"role": "user", "content": f"c{i}"}]) for i in range(40)))

    run(go())
    assert server.stats()["max_in_flight"] <= 5


def _lazy_and_eager(png: bytes, text: str):
    from longdoc_sdg.engine.images import lazy_image_part

    loads = []

    def load():
        loads.append(1)
        return png

    lazy = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Page 1:"},
                lazy_image_part(len(png), load),
                {"type": "text", "text": text},
            ],
        }
    ]
    eager = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Page 1:"}, image_part(png), {"type": "text", "text": text}],
        }
    ]
    return lazy, eager, loads


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("size", [1000, 3 * 2**20])  # one slice; many slices (and streamed for openai)
def test_lazy_images_go_out_byte_for_byte_as_eager_ones_and_retry_the_same(fake, transport, size):
    import hashlib

    from longdoc_sdg.engine.transport import dumps, encode_body

    png = bytes(range(256)) * (size // 256) + b"\x89"
    lazy, eager, loads = _lazy_and_eager(png, "describe [[fake:503*1]]")  # first attempt: 503
    engine = engine_for(fake, transport)
    body = engine.build_body(eager, max_tokens=16)
    wire = dumps(body)
    assert bytes(encode_body(engine.build_body(lazy, max_tokens=16)).build()) == wire
    loads.clear()

    async def go():
        async with engine:
            return await engine.chat(lazy, max_tokens=16)

    assert run(go()).attempts == 2
    key = hashlib.blake2b(wire, digest_size=10).hexdigest()
    assert fake.attempts_by_key == {key: 2}  # both attempts sent exactly the eager body
    assert len(loads) == 2  # the image was read once per attempt, when its body was built
    assert engine.budget.in_use == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_byte_budget_bounds_payload_in_flight(server, transport):
    """Bodies exist only from their building to their sending, at most max_inflight_mb of them
    at once (one larger than the budget alone); requests waiting for answers hold none."""
    from longdoc_sdg.engine.images import lazy_image_part

    server.reset(latency_s=0.4)
    png = bytes(range(256)) * 1200  # 307 KB, about 410 KB as base64
    TOGETHER = 4  # the 1 MiB budget holds two bodies: more in flight means waiting ones hold none
    engine = engine_for(server, transport, concurrency=ConcurrencyConfig(max=64, max_inflight_mb=1))
    budget = engine.budget
    held_at_build = []

    def load():  # called as a body is built: the budget must already cover it
        held_at_build.append(budget.in_use)
        return png

    held_while_waiting = []

    async def one(i, pages=1):
        parts = [lazy_image_part(len(png), load) for _ in range(pages)]
        messages = [{"role": "user", "content": [*parts, {"type": "text", "text": f"page {i}"}]}]
        return await engine.chat(messages, max_tokens=8)

    async def watch():
        while True:
            await asyncio.sleep(0.05)
            if server.in_flight >= TOGETHER:  # answers pending at the server: their bodies are gone
                held_while_waiting.append(budget.in_use)

    async def go():
        async with engine:
            watcher = asyncio.create_task(watch())
            try:
                await asyncio.gather(*(one(i) for i in range(20)), one(99, pages=4))  # 4 pages: > 1 MiB
            finally:
                watcher.cancel()

    run(go())
    big = 4 * 409_600 + 500
    assert 0 < min(held_at_build) and max(held_at_build) <= big
    assert all(held <= 2**20 for held in held_at_build if held < 4 * 409_600)  # the big one went alone
    assert budget.peak <= big and budget.waits > 0 and budget.in_use == 0
    assert server.stats()["max_in_flight"] >= TOGETHER  # yet more were in flight than the budget holds
    assert held_while_waiting and min(held_while_waiting) < 2**20 // 2
