"""Integration tests against a REAL vLLM server (CPU build, tiny random model).

Needs the separate venv made by `bash tests/vllm/install.sh`. Without it the
module is skipped locally, but fails under CI=true (CI must install it). The server is the
session's one (conftest.tiny_vllm), shared with test_workflow_vllm.py.
The model's text is noise: only shapes, fields, status codes and schema
validity are asserted, never wording.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from conftest import TINY_VLLM_KEY, TINY_VLLM_MAX_IMAGES, TINY_VLLM_MAX_MODEL_LEN, TINY_VLLM_SERVED

pytestmark = pytest.mark.vllm

SERVED = TINY_VLLM_SERVED
API_KEY = TINY_VLLM_KEY


def _png(width: int, height: int, shade: int) -> bytes:
    """A small RGB gradient PNG, built by hand so the main env needs no Pillow."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(((x * 7 + shade) % 256, (y * 5) % 256, shade % 256)) for x in range(width))
        for y in range(height)  # each scanline: filter byte 0, then RGB pixels
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _image_part(shade: int = 0, size: int = 256) -> dict:
    url = "data:image/png;base64," + base64.b64encode(_png(size, size, shade)).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def _user(text: str, n_images: int = 0) -> list[dict]:
    parts = [_image_part(shade=40 * i) for i in range(n_images)]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}


class Server:
    def __init__(self, base_url: str, log_path: Path):
        self.base_url = base_url
        self.log_path = log_path
        self.latencies: list[tuple[str, float]] = []

    def request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        api_key: str | None = API_KEY,
        label: str = "",
        timeout: float = 120,
    ) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if api_key:
            req.add_header("Authorization", f"Bearer {api_key}")
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        self.latencies.append((label or path, time.monotonic() - t0))
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            pytest.fail(f"{method} {path} -> {status}, body is not JSON: {raw[:300]!r}")

    def chat(self, label: str = "chat", **body) -> tuple[int, dict]:
        body.setdefault("model", SERVED)
        return self.request("POST", "/v1/chat/completions", body, label=label)


def _report(config, line: str) -> None:
    # shown even with output capture on, so CI logs keep the timings
    tr = config.pluginmanager.get_plugin("terminalreporter")
    cap = config.pluginmanager.get_plugin("capturemanager")
    if tr is None:
        return
    if cap is None:
        tr.write_line(line)
        return
    with cap.global_and_fixture_disabled():
        tr.write_line(line)


@pytest.fixture(scope="module")
def vllm(request, tiny_vllm):
    """The session's tiny server (conftest.tiny_vllm); request latencies reported at the end."""
    server = Server(tiny_vllm.url, tiny_vllm.log_path)
    yield server
    if server.latencies:
        lat = sorted(t for _, t in server.latencies)
        _report(request.config, f"[vllm] {len(lat)} requests: median {lat[len(lat) // 2]:.3f}s, max {lat[-1]:.3f}s")


def _error(body: dict) -> dict:
    err = body.get("error")
    assert isinstance(err, dict), body
    assert isinstance(err.get("message"), str) and err["message"], body
    return err


def _reasoning(message: dict):
    # current vLLM: `reasoning`; older releases: `reasoning_content`
    return message.get("reasoning") or message.get("reasoning_content")


def test_models_lists_served_name(vllm):
    status, body = vllm.request("GET", "/v1/models")
    assert status == 200
    models = {m["id"]: m for m in body["data"]}
    assert SERVED in models
    assert models[SERVED]["max_model_len"] == TINY_VLLM_MAX_MODEL_LEN


def test_api_key_is_enforced(vllm):
    status, body = vllm.request("GET", "/v1/models", api_key=None)
    assert status == 401
    status, body = vllm.request("GET", "/v1/models", api_key="wrong-key")
    assert status == 401


def test_chat_with_one_image(vllm):
    status, body = vllm.chat(
        label="chat 1 image", messages=_user("What does this page show?", 1), max_tokens=24, seed=1, **NO_THINK
    )
    assert status == 200, body
    assert body["model"] == SERVED
    (choice,) = body["choices"]
    assert choice["finish_reason"] in {"stop", "length"}
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 24

    # the image is counted in the prompt (81 tokens for 256x256 on this model)
    status, plain = vllm.chat(
        label="chat text only", messages=_user("What does this page show?"), max_tokens=4, **NO_THINK
    )
    assert status == 200, plain
    assert usage["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_chat_with_max_images_and_text(vllm):
    # as many images as the server allows, beside a few hundred words
    text = "Compare the pages and list every table and figure. " * 25
    status, body = vllm.chat(
        label="chat max images", messages=_user(text, TINY_VLLM_MAX_IMAGES), max_tokens=32, **NO_THINK
    )
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    assert body["usage"]["prompt_tokens"] > TINY_VLLM_MAX_IMAGES * 81


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "unknown"]},
        "page": {"type": "integer", "minimum": 1, "maximum": 99},
        "note": {"type": "string", "maxLength": 40},
    },
    "required": ["answer", "page", "note"],
    "additionalProperties": False,
}


def _check_answer(obj) -> None:
    # hand-written check of ANSWER_SCHEMA: jsonschema may not be in the main env
    assert isinstance(obj, dict)
    assert set(obj) == {"answer", "page", "note"}
    assert obj["answer"] in {"yes", "no", "unknown"}
    assert isinstance(obj["page"], int) and not isinstance(obj["page"], bool)
    assert 1 <= obj["page"] <= 99
    assert isinstance(obj["note"], str) and len(obj["note"]) <= 40


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_is_valid(vllm, seed):
    # bounded schema (enum, int range, maxLength) so the noise model always
    # finishes well within max_tokens
    status, body = vllm.chat(
        label="json_schema",
        messages=_user("Answer in JSON: is there a table on the page?", 1),
        max_tokens=256,
        seed=seed,
        temperature=1.0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
        },
        **NO_THINK,
    )
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    _check_answer(json.loads(choice["message"]["content"]))  # strict: no raw control chars


def test_unknown_model_is_404(vllm):
    status, body = vllm.chat(label="404", model="no-such-model", messages=_user("hi"), max_tokens=4)
    assert status == 404
    _error(body)


def test_too_many_images_is_400(vllm):
    status, body = vllm.chat(label="too many images", messages=_user("hi", TINY_VLLM_MAX_IMAGES + 1), max_tokens=4)
    assert status == 400
    _error(body)


def test_bad_base64_image_is_400(vllm):
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not-base64@@"}}
    status, body = vllm.chat(
        label="bad image", max_tokens=4, messages=[{"role": "user", "content": [bad, {"type": "text", "text": "hi"}]}]
    )
    assert status == 400
    _error(body)


def test_prompt_over_context_is_400(vllm):
    text = "table figure page " * TINY_VLLM_MAX_MODEL_LEN
    status, body = vllm.chat(label="too long", messages=_user(text), max_tokens=4)
    assert status == 400
    _error(body)


def test_reasoning_field_when_thinking_on(vllm):
    status, body = vllm.chat(
        label="thinking on",
        messages=_user("Think, then answer.", 1),
        max_tokens=32,
        seed=3,
        chat_template_kwargs={"enable_thinking": True},
    )
    assert status == 200, body
    msg = body["choices"][0]["message"]
    reasoning = _reasoning(msg)
    assert isinstance(reasoning, str) and reasoning

    # thinking off: the parser must leave everything as content
    status, body = vllm.chat(label="thinking off", messages=_user("Answer.", 1), max_tokens=16, seed=3, **NO_THINK)
    assert status == 200, body
    msg = body["choices"][0]["message"]
    assert not _reasoning(msg)
    assert isinstance(msg["content"], str)
