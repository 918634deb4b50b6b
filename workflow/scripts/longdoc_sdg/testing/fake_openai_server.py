"""TEST DOUBLE: a fake OpenAI-compatible chat server for fast, deterministic tests and benchmarks.

It is not a model. It answers `/health`, `/v1/models` and `/v1/chat/completions` the way vLLM's
OpenAI server does (shapes, error bodies, reasoning fields, usage), with output derived
deterministically from the request bytes, schema-valid JSON for `json_schema` requests, a
capacity limit like vLLM's `--max-num-seqs` (that many requests run at once, the rest queue),
a fixed latency per request, a vLLM-style `/metrics` (`vllm:num_requests_running`,
`vllm:num_requests_waiting`, request and token counters), an optional API key, and injectable
faults.

Faults, three ways (checked in this order for every chat request):
- schedule: `schedule[i]` is the fault of the i-th chat request received ("ok" = none);
- directive: the request text contains `[[fake:KIND]]` (content kinds: every attempt of that
  request) or `[[fake:KIND*N]]` (transient kinds: the first N attempts, default 1);
- shares: `faults={"500": 0.1, "length": 0.05, ...}`. Transient kinds are drawn anew for every
  attempt of a request, content kinds once per distinct request (so retries see the same reply).

Transient kinds: 500 502 503 reset timeout malformed_body. Content kinds: 400 length
reasoning_only invalid_json schema_invalid.

Self-consistency (`consistent_share` / `--consistent-answers SHARE`, off by default): the double
remembers the questions it wrote (a `question` field of its JSON replies, or a free reply later
quoted in a request) and the first answer it gave to each; a later free-text request quoting such
a question gets that answer again for SHARE of the questions (fixed by a hash of the question) and
other words for the rest. The verify stage's re-answers then agree with the generated answers for
a known, deterministic part of the rows.

Run: `python -m longdoc_sdg.testing.fake_openai_server --port 0 --latency 0.2` (prints
`FAKE_OPENAI_SERVER_LISTENING <url>` when ready), `FakeOpenAIServer(...).start()` for a thread
in the test process, or `spawn_fake_server(...)` for a separate process. The command line also
takes vLLM's server flags (`--served-model-name`, `--host`, `--port`, the key in `VLLM_API_KEY`;
unknown vLLM flags are ignored), so a test deployment (tests/deployments/fake-vllm.yaml) can
run it under the serve rule in place of vLLM; `--crash-on-start`, `--pretend NAME`,
`--startup-delay` and `--stats-file` misbehave or report on request. Under the serve wrapper
`LONGDOC_SERVE_REPLICA` names the replica, so `--replica-startup-delay I=S`,
`--replica-start-gate I=PATH` (load until PATH exists) and `--replica-pretend I=NAME` make one
replica of several late or an impostor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

from aiohttp import web

try:  # orjson keeps the double cheap; stdlib json is the fallback
    import orjson

    def _loads(data):
        return orjson.loads(data)

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment
    import json

    def _loads(data):
        return json.loads(data)

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


TRANSIENT_FAULTS = ("500", "502", "503", "reset", "timeout", "malformed_body")
CONTENT_FAULTS = ("400", "length", "reasoning_only", "invalid_json", "schema_invalid")
ALL_FAULTS = TRANSIENT_FAULTS + CONTENT_FAULTS
READY_MARKER = "FAKE_OPENAI_SERVER_LISTENING"

_WORDS = (
    "page table figure revenue total section method result value report annual growth "
    "chart column row summary data model sample year share rate index note policy budget"
).split()


@dataclass
class FakeServerConfig:
    models: list[str] = field(default_factory=lambda: ["fake-model"])
    api_key: str | None = None
    latency_s: float = 0.0
    max_num_seqs: int = 256
    reasoning: bool = False
    # vLLM renamed reasoning_content to reasoning; clients must read both
    reasoning_field: str = "reasoning"
    faults: dict[str, float] = field(default_factory=dict)
    schedule: list[str] = field(default_factory=list)
    seed: int = 0
    # how long a "timeout" fault stalls before answering (client should give up first)
    hang_s: float = 30.0
    # listed by /v1/models as vLLM does (a Qwen3-VL's native context by default); the fake
    # never enforces it: clients must keep their requests inside it
    max_model_len: int = 262144
    # A made-up tokenizer behind vLLM's POST /tokenize: a message's text costs one token per this
    # many UTF-8 bytes, plus 4 per message and 3 for the generation prompt. None: no such route
    # (404), like an OpenAI-compatible server other than vLLM.
    tokenize_bytes_per_token: float | None = None
    healthy: bool = True
    # a misbehaving endpoint or proxy quoting the request's Authorization header in error bodies
    echo_key_in_errors: bool = False
    # Self-consistency (None: off): asked again about a question it wrote, the double gives the
    # answer it gave before for this share of its questions (by a hash of the question) and
    # other words for the rest, like an independent re-answer that agrees that often.
    consistent_share: float | None = None

    def __post_init__(self) -> None:
        for kind in list(self.faults) + [s for s in self.schedule if s != "ok"]:
            if kind not in ALL_FAULTS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(ALL_FAULTS)}")
        if self.consistent_share is not None and not 0 <= self.consistent_share <= 1:
            raise ValueError(f"consistent_share must be in [0, 1], got {self.consistent_share}")


def _uniform(*parts: Any) -> float:
    """A deterministic draw in [0, 1) from the parts."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _pick(shares: dict[str, float], kinds: tuple[str, ...], u: float) -> str | None:
    acc = 0.0
    for kind in kinds:
        acc += shares.get(kind, 0.0)
        if u < acc:
            return kind
    return None


def _request_texts(req: dict) -> Iterator[str]:
    """The text parts of a chat request's messages."""
    for message in req["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            yield from (p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def _error_body(status: int, message: str, kind: str, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": kind, "param": param, "code": status}})


def _json_response(payload: bytes, status: int = 200) -> web.Response:
    return web.Response(body=payload, status=status, content_type="application/json")


# ---------------------------------------------------------------- values from a JSON schema


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **extra}
    return schema


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(n, 1)))


def value_from_schema(schema: dict, rng: random.Random, root: dict | None = None, depth: int = 0) -> Any:
    """A value that validates against `schema` (the subset pydantic and our stages emit)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [_resolve(o, root) for o in schema[key]]
            non_null = [o for o in options if o.get("type") != "null"]
            # deep in recursive schemas, stop at null when allowed
            if depth > 6 and len(non_null) < len(options):
                return None
            return value_from_schema(rng.choice(non_null or options), rng, root, depth + 1)
    if "allOf" in schema:
        merged: dict = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return value_from_schema(merged, rng, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        out = {}
        for name, sub in schema.get("properties", {}).items():
            out[name] = value_from_schema(sub, rng, root, depth + 1)
        extra = schema.get("additionalProperties")
        # a typed map with a minimum size needs generated keys
        if isinstance(extra, dict) and schema.get("minProperties", 0) > len(out):
            for i in range(schema["minProperties"] - len(out)):
                out[f"key{i}"] = value_from_schema(extra, rng, root, depth + 1)
        return out
    if kind == "array":
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", max(low, 3))
        n = 0 if depth > 6 and low == 0 else rng.randint(max(low, min(1, high)), high)
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", {})
        values: list = []
        attempts = 0
        while len(values) < n and attempts < n * 20 + 20:
            attempts += 1
            sub = prefix[len(values)] if len(values) < len(prefix) else items
            value = value_from_schema(sub if isinstance(sub, dict) else {}, rng, root, depth + 1)
            if schema.get("uniqueItems") and value in values:
                continue
            values.append(value)
        return values
    if kind == "integer":
        low = schema.get("minimum", schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else 0)
        high = schema.get("maximum", schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else low + 100)
        return rng.randint(int(low), int(high))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0.0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100.0))
        value = round(rng.uniform(low, high), 3)
        # keep strictly inside exclusive bounds
        if "exclusiveMinimum" in schema and value <= low or "exclusiveMaximum" in schema and value >= high:
            value = (low + high) / 2
        return value
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = _words(rng, rng.randint(2, 8))
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    while len(text) < low:
        text += " " + _words(rng, 4)
    if high is not None:
        text = text[:high]
    return text


# ---------------------------------------------------------------- the server


class FakeOpenAIServer:
    """The TEST DOUBLE. `start()` runs it on a thread; `start_async()` on the caller's loop."""

    def __init__(self, config: FakeServerConfig | None = None, **overrides: Any):
        self._sem: asyncio.Semaphore | None = None
        self.config = config or FakeServerConfig(**overrides)
        if config is not None and overrides:
            self.configure(**overrides)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        # When set, stats() is written there (atomically) after every counted chat request.
        self.stats_path: str | None = None
        self.reset_stats()

    # -- control

    def configure(self, **changes: Any) -> None:
        """Change behaviour while running (faults, latency, health, ...)."""
        known = {f.name for f in fields(FakeServerConfig)}
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown setting {key}")
            setattr(self.config, key, value)
        self.config.__post_init__()
        if "max_num_seqs" in changes and self._sem is not None:
            self._sem = asyncio.Semaphore(self.config.max_num_seqs)

    def reset(self, **settings: Any) -> None:
        """Default behaviour plus `settings`, and zeroed statistics (between tests)."""
        self.config = FakeServerConfig(**settings)
        if self._sem is not None:
            self._sem = asyncio.Semaphore(self.config.max_num_seqs)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = 0  # chat completion requests received
        self.attempts_by_key: dict[str, int] = {}
        self.outcomes: dict[str, int] = {}
        self.content_fault_keys: dict[str, set[str]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.waiting = 0  # admitted chat requests queued for a free slot
        self.other_requests = 0
        self.tokenize_requests = 0
        self.completed = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        # consistent_share: the questions it wrote -> the answer it gave (None until answered)
        self.asked: dict[str, str | None] = {}

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "distinct_requests": len(self.attempts_by_key),
            "repeated_requests": self.requests - len(self.attempts_by_key),
            "outcomes": dict(self.outcomes),
            "content_faults": {k: len(v) for k, v in self.content_fault_keys.items()},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "other_requests": self.other_requests,
            "tokenize_requests": self.tokenize_requests,
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- lifecycle

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_config", self._config)
        app.router.add_post("/_reset", self._reset)
        return app

    async def start_async(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._sem = asyncio.Semaphore(self.config.max_num_seqs)
        # handler_cancellation: a request whose client went away (timeouts) leaves the queue
        self._runner = web.AppRunner(self.build_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        self.host = host
        self.port = self._runner.addresses[0][1]
        return self.base_url

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on a daemon thread with its own event loop; returns the `/v1` base URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async(host, port))
            except BaseException as exc:  # surface bind errors to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    def __enter__(self) -> "FakeOpenAIServer":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- handlers

    async def _health(self, request: web.Request) -> web.Response:
        self.other_requests += 1
        return web.Response(status=200 if self.config.healthy else 503)

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def _unauthorized(self) -> web.Response:
        return _json_response(_error_body(401, "Unauthorized", "AuthenticationError"), 401)

    async def _models(self, request: web.Request) -> web.Response:
        self.other_requests += 1
        if not self._authorized(request):
            return self._unauthorized()
        created = 1700000000
        data = [
            {
                "id": m,
                "object": "model",
                "created": created,
                "owned_by": "fake",
                "root": m,
                "parent": None,
                "max_model_len": self.config.max_model_len,
            }
            for m in self.config.models
        ]
        return _json_response(_dumps({"object": "list", "data": data}))

    async def _tokenize(self, request: web.Request) -> web.Response:
        self.other_requests += 1
        per_token = self.config.tokenize_bytes_per_token
        if per_token is None:
            return _json_response(_error_body(404, "Not Found", "NotFoundError"), 404)
        try:
            req = await request.json()
            messages = req["messages"]
        except Exception:
            return _json_response(_error_body(400, "expected a JSON body with messages", "BadRequestError"), 400)
        self.tokenize_requests += 1
        texts = list(_request_texts(req))
        count = sum(math.ceil(len(t.encode("utf-8")) / per_token) for t in texts) + 4 * len(messages) + 3
        return _json_response(
            _dumps({"count": count, "max_model_len": self.config.max_model_len, "tokens": list(range(count))})
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text like vLLM's /metrics (no key needed there either)."""
        label = f'{{model_name="{self.config.models[0]}"}}'
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(self.in_flight)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {float(self.waiting)}",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{label} {float(self.completed)}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {float(self.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(self.generation_tokens)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _stats(self, request: web.Request) -> web.Response:
        return _json_response(_dumps(self.stats()))

    async def _config(self, request: web.Request) -> web.Response:
        try:
            self.configure(**_loads(await request.read()))
        except (ValueError, TypeError) as exc:
            return _json_response(_error_body(400, str(exc), "BadRequestError"), 400)
        return _json_response(b"{}")

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json_response(b"{}")

    def _choose_fault(self, index: int, key: str, attempt: int, body: bytes) -> str | None:
        cfg = self.config
        if index < len(cfg.schedule):
            kind = cfg.schedule[index]
            return None if kind == "ok" else kind
        at = body.find(b"[[fake:")
        if at >= 0:
            end = body.find(b"]]", at)
            spec = body[at + 7 : end].decode(errors="replace")
            kind, _, times = spec.partition("*")
            if kind in CONTENT_FAULTS:
                return kind
            if kind in TRANSIENT_FAULTS:
                return kind if attempt <= int(times or 1) else None
        if cfg.faults:
            kind = _pick(cfg.faults, TRANSIENT_FAULTS, _uniform(cfg.seed, key, attempt, "t"))
            if kind is None:
                kind = _pick(cfg.faults, CONTENT_FAULTS, _uniform(cfg.seed, key, "c"))
            return kind
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.read()
        echo = ""
        if self.config.echo_key_in_errors:
            echo = f" (request had Authorization: {request.headers.get('Authorization')})"
        index = self.requests
        self.requests += 1
        key = hashlib.blake2b(body, digest_size=10).hexdigest()
        attempt = self.attempts_by_key.get(key, 0) + 1
        self.attempts_by_key[key] = attempt
        try:
            req = _loads(body)
            if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
                raise ValueError("messages must be a list")
        except ValueError as exc:
            return self._count(
                "400", _json_response(_error_body(400, f"malformed request: {exc}{echo}", "BadRequestError"), 400)
            )
        model = req.get("model")
        if model not in self.config.models:
            message = f"The model `{model}` does not exist.{echo}"
            return self._count("404", _json_response(_error_body(404, message, "NotFoundError", "model"), 404))

        fault = self._choose_fault(index, key, attempt, body)
        hung = fault == "timeout"
        if fault in CONTENT_FAULTS:
            self.content_fault_keys.setdefault(fault, set()).add(key)
        if fault == "timeout":
            # counted now: the client usually gives up and this handler is cancelled
            self._count("timeout", None)
            # stall outside the queue, like a hung request; the client's timeout should fire first
            await asyncio.sleep(self.config.hang_s)
            fault = None  # a client that waited this long gets a normal answer (uncounted)
        if fault == "reset":
            self._count("reset", None)
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # linger 0: close() sends a TCP RST, a real "connection reset by peer"
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            raise asyncio.CancelledError
        if fault in ("500", "502", "503"):
            status = int(fault)
            return self._count(
                fault,
                _json_response(_error_body(status, "injected server error" + echo, "InternalServerError"), status),
            )
        if fault == "400":
            message = "This model's maximum context length is 8192 tokens. (injected)" + echo
            return self._count(fault, _json_response(_error_body(400, message, "BadRequestError", "messages"), 400))

        assert self._sem is not None
        sem = self._sem  # configure() may swap it meanwhile: release the one we hold
        self.waiting += 1
        try:
            await sem.acquire()
        finally:
            self.waiting -= 1
        try:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.config.latency_s > 0:
                    await asyncio.sleep(self.config.latency_s)
            finally:
                self.in_flight -= 1
        finally:
            sem.release()

        if fault == "malformed_body":
            return self._count(fault, _json_response(b'{"id": "chatcmpl-fake", "choices": [{"message": {"content": "'))
        payload = self._completion(req, key, fault)
        self.completed += 1
        self.prompt_tokens += payload["usage"]["prompt_tokens"]
        self.generation_tokens += payload["usage"]["completion_tokens"]
        response = _json_response(_dumps(payload))
        return response if hung else self._count(fault or "ok", response)

    def _count(self, outcome: str, response: web.Response | None) -> web.Response | None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if self.stats_path:
            self._write_stats(self.stats_path)
        return response

    def _write_stats(self, path: str) -> None:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as handle:
            handle.write(_dumps({**self.stats(), "pid": os.getpid(), "models": list(self.config.models)}))
        os.replace(tmp, path)

    def _completion(self, req: dict, key: str, fault: str | None) -> dict:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:{key}")
        max_tokens = req.get("max_tokens") or req.get("max_completion_tokens") or 256
        schema = None
        fmt = req.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
        elif isinstance(req.get("structured_outputs"), dict) and "json" in req["structured_outputs"]:
            schema = req["structured_outputs"]["json"]
        elif fmt.get("type") == "json_object":
            schema = {"type": "object", "properties": {"answer": {"type": "string"}}}

        if fault == "schema_invalid":
            content: str | None = '{"__fake_invalid__": true}'
        elif fault == "invalid_json":
            content = '{"answer": "unterminated'
        elif schema is not None:
            value = value_from_schema(schema, rng)
            content = _dumps(value).decode()
            if cfg.consistent_share is not None:
                self._remember_questions(value)
        else:
            content = _words(rng, min(int(max_tokens), 24))
            if cfg.consistent_share is not None and fault is None:
                content = self._consistent_reply(req, content)
        finish = "stop"
        if fault == "length":
            # a truncated reply, cut where the token budget ran out
            content = content[: max(1, len(content) // 2)]
            finish = "length"

        reasoning = None
        if cfg.reasoning or fault == "reasoning_only":
            reasoning = "Let me think. " + _words(rng, 12)
        if fault == "reasoning_only":
            content = None

        prompt_tokens = 1
        for message in req["messages"]:
            part = message.get("content") if isinstance(message, dict) else None
            if isinstance(part, str):
                prompt_tokens += len(part) // 4 + 1
            elif isinstance(part, list):
                for item in part:
                    if item.get("type") == "text":
                        prompt_tokens += len(item.get("text", "")) // 4 + 1
                    else:
                        prompt_tokens += 256  # an image: fixed, no need to decode it
        reasoning_tokens = len(reasoning) // 4 + 1 if reasoning else 0
        completion_tokens = (len(content) // 4 + 1 if content else 0) + reasoning_tokens
        if fault == "length":
            completion_tokens = int(max_tokens)
        message_out: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": []}
        if reasoning is not None:
            message_out[cfg.reasoning_field] = reasoning
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return {
            "id": f"chatcmpl-fake-{key}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req["model"],
            "choices": [
                {"index": 0, "message": message_out, "logprobs": None, "finish_reason": finish, "stop_reason": None}
            ],
            "usage": usage,
        }

    def _remember_questions(self, value: Any) -> None:
        """Every {"question": ..., "answer": ...} object of a JSON reply, at any depth."""
        if isinstance(value, dict):
            question = value.get("question")
            if isinstance(question, str) and question.strip():
                answer = value.get("answer")
                self.asked[question.strip()] = answer.strip() if isinstance(answer, str) else None
            for item in value.values():
                self._remember_questions(item)
        elif isinstance(value, list):
            for item in value:
                self._remember_questions(item)

    def _consistent_reply(self, req: dict, content: str) -> str:
        """A free reply: to a request quoting a question it wrote, the remembered answer (or, for the
        disagreeing share, other words fixed by the question); else `content`, remembered as a
        possible question (a free-text question call's reply)."""
        text = "\n".join(_request_texts(req))
        quoted = [q for q in self.asked if q in text]
        if not quoted:
            self.asked.setdefault(content.strip(), None)
            return content
        question = max(quoted, key=len)  # the most specific one quoted
        answer = self.asked[question]
        if answer is None:  # the first answer to this question: the one to agree with later
            self.asked[question] = content.strip()
            return content
        if _uniform(self.config.seed, "agree", question) < self.config.consistent_share:
            return answer
        return _words(random.Random(f"{self.config.seed}:disagree:{question}"), 6)


# ---------------------------------------------------------------- separate process


@contextlib.contextmanager
def spawn_fake_server(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 20.0, quiet: bool = False
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run the double in its own process (own event loop, own core); yields (process, base_url).
    quiet: drop its stderr (its banner), e.g. when a benchmark starts many."""
    cmd = [sys.executable, "-m", "longdoc_sdg.testing.fake_openai_server", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + timeout_s
        base_url = None
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY_MARKER):
                base_url = line.split()[1].rstrip("/") + "/v1"
                break
        if base_url is None:
            raise RuntimeError(f"fake server did not start (exit code {proc.poll()})")
        yield proc, base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="TEST DOUBLE: fake OpenAI-compatible chat server. It also accepts vLLM's server "
        "flags (--model, --served-model-name, --host, --port, --api-key and the key in VLLM_API_KEY) "
        "so a deployment can run it in place of vLLM; other vLLM flags are ignored.",
        allow_abbrev=False,  # a vLLM flag must never be taken for a prefix of ours
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help="served model name (repeatable); with vLLM's --served-model-name, that one wins",
    )
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        action="extend",
        dest="served_names",
        help="as vLLM: the names /v1/models lists (overrides --model)",
    )
    parser.add_argument("--api-key-env", help="name of an env var holding the key to require")
    parser.add_argument(
        "--api-key", help="as vLLM: the key to require (default: $VLLM_API_KEY, like vLLM, when --api-key-env is unset)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request while holding a slot")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=262144, help="as vLLM: listed by /v1/models")
    parser.add_argument("--reasoning", action="store_true")
    parser.add_argument("--reasoning-field", default="reasoning", choices=["reasoning", "reasoning_content"])
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=SHARE")
    parser.add_argument("--schedule", default="", help="comma-separated fault kinds by request index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--echo-key-in-errors", action="store_true", help="quote the request's Authorization header in error bodies"
    )
    parser.add_argument(
        "--consistent-answers",
        type=float,
        metavar="SHARE",
        help="asked again about a question it wrote, give the same answer for SHARE of its questions, other "
        "words for the rest (an independent re-answer that agrees that often; off by default)",
    )
    parser.add_argument("--hang", type=float, default=30.0, help="stall of a timeout fault, seconds")
    # Start-up behaviour, for tests of the serve rule.
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds of 'loading' before listening")
    parser.add_argument(
        "--crash-on-start",
        action="store_true",
        help="after the start-up delay, print a made-up engine error and exit 3 (never listens)",
    )
    parser.add_argument(
        "--pretend",
        metavar="NAME",
        help="list NAME in /v1/models instead of the served names (an impostor on the port)",
    )
    parser.add_argument(
        "--replica-startup-delay",
        action="append",
        default=[],
        metavar="INDEX=SECONDS",
        help="extra start-up delay of replica INDEX ($LONGDOC_SERVE_REPLICA, set by the serve wrapper)",
    )
    parser.add_argument(
        "--replica-start-gate",
        action="append",
        default=[],
        metavar="INDEX=PATH",
        help="replica INDEX keeps 'loading' until PATH exists (a test decides when it joins, whatever the load)",
    )
    parser.add_argument(
        "--replica-pretend",
        action="append",
        default=[],
        metavar="INDEX=NAME",
        help="replica INDEX lists NAME instead of the served names (one impostor among replicas)",
    )
    parser.add_argument(
        "--stats-file",
        default=os.environ.get("FAKE_OPENAI_SERVER_STATS"),
        help="write the request statistics (JSON) here after every chat request (default: $FAKE_OPENAI_SERVER_STATS)",
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    args, ignored = _parse_args(argv)
    say = lambda message: print(f"[fake-openai-server] {message}", file=sys.stderr, flush=True)  # noqa: E731
    say("TEST DOUBLE: a fake OpenAI-compatible server, not vLLM; its answers are made up")
    if ignored:
        say("ignoring flags it does not implement: " + " ".join(ignored))
    faults = {}
    for item in args.fault:
        kind, _, share = item.partition("=")
        faults[kind] = float(share)
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
    else:
        api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    models = args.served_names or args.models or ["fake-model"]
    if args.pretend:
        models = [args.pretend]
    replica = os.environ.get("LONGDOC_SERVE_REPLICA", "")
    for item in args.replica_pretend:
        index, _, name = item.partition("=")
        if index == replica:
            models = [name]
    for item in args.replica_startup_delay:
        index, _, seconds = item.partition("=")
        if index == replica:
            args.startup_delay += float(seconds)
    start_gate = next(
        (path for index, _, path in (g.partition("=") for g in args.replica_start_gate) if index == replica), None
    )
    config = FakeServerConfig(
        models=models,
        api_key=api_key,
        latency_s=args.latency,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        reasoning=args.reasoning,
        reasoning_field=args.reasoning_field,
        faults=faults,
        schedule=[s for s in args.schedule.split(",") if s],
        seed=args.seed,
        hang_s=args.hang,
        consistent_share=args.consistent_answers,
        echo_key_in_errors=args.echo_key_in_errors,
    )
    server = FakeOpenAIServer(config)
    if args.stats_file:
        # One file per replica when several share a deployment's settings.
        stats_file = f"{args.stats_file}.replica-{replica}" if replica not in ("", "0") else args.stats_file
        server.stats_path = os.path.abspath(stats_file)

    if args.startup_delay > 0:
        say(f"loading for {args.startup_delay:g}s (pretend)")
        time.sleep(args.startup_delay)
    if start_gate:
        say(f"loading until {start_gate} exists (pretend)")
        while not os.path.exists(start_gate):
            time.sleep(0.1)
    if args.crash_on_start:
        say("RuntimeError: engine core failed to start (injected by --crash-on-start)")
        sys.exit(3)

    async def serve() -> None:
        await server.start_async(args.host, args.port)
        say(f"serving {', '.join(models)} on {server.url} ({'API key required' if api_key else 'no API key'})")
        print(f"{READY_MARKER} {server.url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
