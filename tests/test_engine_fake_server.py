"""The test double itself: shapes, determinism, schema-valid output, faults, key check, CLI."""

import asyncio
import json
import random
import urllib.error
import urllib.request
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from longdoc_sdg.engine import closed_schema, parse_reply
from longdoc_sdg.testing.fake_openai_server import (
    FakeOpenAIServer,
    spawn_fake_server,
    value_from_schema,
)


class Cell(BaseModel):
    row: int = Field(ge=0, le=9)
    value: float = Field(gt=0, lt=1)


class Table(BaseModel):
    title: str = Field(min_length=3, max_length=40)
    cells: list[Cell] = Field(min_length=1, max_length=4)
    kind: Literal["bar", "line", "none"]
    note: Optional[str] = None
    tags: list[Literal["a", "b", "c"]] = Field(max_length=3)
    counts: dict[str, int]
    nested: Optional["Table"] = None


def post(url: str, body: dict, key: str | None = None) -> tuple[int, dict | bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            data = resp.read()
            return resp.status, json.loads(data)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def chat_body(text: str, **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def test_values_from_closed_schemas_validate():
    schema = closed_schema(Table)
    for seed in range(50):
        value = value_from_schema(schema, random.Random(seed))
        parse_reply(Table, json.dumps(value))  # raises RecordError if invalid


def test_models_health_and_chat_shape(server):
    server.reset(reasoning=True)
    with urllib.request.urlopen(server.url + "/health") as resp:
        assert resp.status == 200
    with urllib.request.urlopen(server.base_url + "/models") as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "fake-model"
    status, reply = post(server.base_url + "/chat/completions", chat_body("hello", max_tokens=8))
    assert status == 200
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] and choice["message"]["reasoning"]
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]


def test_deterministic_per_request(server):
    server.reset()
    a = post(server.base_url + "/chat/completions", chat_body("same"))[1]
    b = post(server.base_url + "/chat/completions", chat_body("same"))[1]
    c = post(server.base_url + "/chat/completions", chat_body("other"))[1]
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["choices"][0]["message"]["content"] != c["choices"][0]["message"]["content"]
    assert server.stats()["repeated_requests"] == 1


def test_json_schema_reply_is_valid(server):
    server.reset()
    fmt = {"type": "json_schema", "json_schema": {"name": "Table", "schema": closed_schema(Table)}}
    for i in range(10):
        status, reply = post(server.base_url + "/chat/completions", chat_body(f"t{i}", response_format=fmt))
        assert status == 200
        parse_reply(Table, reply["choices"][0]["message"]["content"])


def test_api_key_and_unknown_model(server):
    server.reset(api_key="sk-fake-right")
    status, reply = post(server.base_url + "/chat/completions", chat_body("x"), key="wrong")
    assert status == 401
    status, reply = post(server.base_url + "/chat/completions", chat_body("x"), key="sk-fake-right")
    assert status == 200
    status, reply = post(
        server.base_url + "/chat/completions", {**chat_body("x"), "model": "nope"}, key="sk-fake-right"
    )
    assert status == 404 and "does not exist" in reply["error"]["message"]


@pytest.mark.parametrize(
    "kind, check",
    [
        ("length", lambda s, r: r["choices"][0]["finish_reason"] == "length"),
        (
            "reasoning_only",
            lambda s, r: r["choices"][0]["message"]["content"] is None and r["choices"][0]["message"]["reasoning"],
        ),
        ("invalid_json", lambda s, r: r["choices"][0]["message"]["content"].startswith('{"answer": "unterminated')),
        (
            "schema_invalid",
            lambda s, r: json.loads(r["choices"][0]["message"]["content"]) == {"__fake_invalid__": True},
        ),
        ("400", lambda s, r: s == 400 and r["error"]["code"] == 400),
        ("503", lambda s, r: s == 503),
    ],
)
def test_directive_faults(server, kind, check):
    server.reset()
    status, reply = post(server.base_url + "/chat/completions", chat_body(f"x [[fake:{kind}]]"))
    assert check(status, reply)


def test_transient_directive_heals_after_n_attempts(server):
    server.reset()
    body = chat_body("x [[fake:500*2]]")
    assert [post(server.base_url + "/chat/completions", body)[0] for _ in range(3)] == [500, 500, 200]


def test_schedule_and_reset_fault(server):
    server.reset(schedule=["reset", "malformed_body", "ok"])
    url = server.base_url + "/chat/completions"
    with pytest.raises(Exception):
        post(url, chat_body("a"))
    request = urllib.request.Request(url, json.dumps(chat_body("b")).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as resp:
        with pytest.raises(ValueError):
            json.loads(resp.read())
    assert post(url, chat_body("c"))[0] == 200
    assert server.stats()["outcomes"] == {"reset": 1, "malformed_body": 1, "ok": 1}


def test_share_faults_are_deterministic_per_request(server):
    server.reset(faults={"length": 0.5}, seed=3)
    url = server.base_url + "/chat/completions"
    first = [post(url, chat_body(f"q{i}"))[1]["choices"][0]["finish_reason"] for i in range(40)]
    again = [post(url, chat_body(f"q{i}"))[1]["choices"][0]["finish_reason"] for i in range(40)]
    assert first == again and 5 < first.count("length") < 35
    assert server.stats()["content_faults"]["length"] == first.count("length")


def test_queue_limits_parallel_requests(server):
    server.reset(latency_s=0.2, max_num_seqs=3)

    async def burst():
        import aiohttp

        async with aiohttp.ClientSession() as session:

            async def one(i):
                async with session.post(server.base_url + "/chat/completions", json=chat_body(f"p{i}")) as resp:
                    return resp.status

            return await asyncio.gather(*(one(i) for i in range(9)))

    assert asyncio.run(burst()) == [200] * 9
    assert server.stats()["max_in_flight"] == 3


def test_subprocess_cli_and_stats():
    with spawn_fake_server("--latency", "0", "--model", "m1", "--fault", "length=1.0") as (proc, base_url):
        status, reply = post(
            base_url + "/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "x"}]}
        )
        assert status == 200 and reply["choices"][0]["finish_reason"] == "length"
        with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/_stats") as resp:
            assert json.loads(resp.read())["requests"] == 1
    assert proc.poll() is not None


QA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "QA",
        "schema": {
            "type": "object",
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"],
        },
    },
}


def reply_text(url: str, text: str, **extra) -> str:
    return post(url, chat_body(text, **extra))[1]["choices"][0]["message"]["content"]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_consistent_answers_agree_for_their_share_of_questions(server, share):
    """Re-asked about a question it wrote (JSON question/answer, or a free reply quoted back),
    the double gives the first answer again for `share` of the questions, the same way however
    the request is worded; other words for the rest."""
    server.reset(consistent_share=share)
    url = server.base_url + "/chat/completions"
    pairs = [json.loads(reply_text(url, f"write a question {i}", response_format=QA_FORMAT)) for i in range(30)]
    for i in range(10):  # free-text question, then its answer: the pair later answers agree with
        question = reply_text(url, f"ask something {i}")
        pairs.append({"question": question, "answer": reply_text(url, f"Answer this: {question}")})
    agreed = 0
    for pair in pairs:
        first = reply_text(url, f"Question:\n{pair['question']}\nEnd with Answer:")
        again = reply_text(url, f"Someone replied {first!r} to: {pair['question']}")
        assert first == again
        agreed += first == pair["answer"].strip()
    if share in (0.0, 1.0):
        assert agreed == share * len(pairs)
    else:
        assert 8 < agreed < 32


def test_consistent_answers_are_off_by_default(server):
    server.reset()
    url = server.base_url + "/chat/completions"
    pair = json.loads(reply_text(url, "write a question", response_format=QA_FORMAT))
    assert reply_text(url, f"Question: {pair['question']}") != pair["answer"]
    assert server.asked == {}
