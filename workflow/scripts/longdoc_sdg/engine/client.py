"""ChatEngine: one OpenAI-compatible chat client with adaptive concurrency, retries, a circuit
breaker, structured outputs and token accounting, shared by every model stage."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from ..io import get_logger, register_secret
from .config import BreakerConfig, ConcurrencyConfig, EndpointConfig, RetryConfig
from .errors import EndpointError, RecordError
from .limiter import AdaptiveLimiter, ByteBudget, CircuitBreaker
from .pool import NoReplicaLeft, ReplicaPool
from .schema import parse_reply, response_format
from .transport import EncodedBody, TransportError, encode_body, loads

log = get_logger("engine")

# Status codes that say this exact request can never succeed.
_BAD_REQUEST = (400, 413, 422)
# Kinds of failed attempts that mean the server is overloaded or unwell: shrink concurrency.
_OVERLOAD = ("server_error", "timeout", "connection_error", "unreachable")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_response(cls, usage: dict | None) -> "Usage":
        usage = usage or {}
        details = usage.get("completion_tokens_details") or {}
        return cls(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(details.get("reasoning_tokens") or 0),
        )

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def as_columns(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass
class EngineUsage(Usage):
    """Shard totals: tokens of every answered request, plus request counts."""

    requests: int = 0  # answered (HTTP 200) requests, including replies that failed checks
    attempts: int = 0  # HTTP attempts, retries included
    replica_retries: int = 0  # attempts resent because their replica stopped answering


@dataclass
class ChatResult:
    content: str | None
    reasoning: str | None
    parsed: BaseModel | None
    finish_reason: str | None
    usage: Usage
    model: str = ""
    attempts: int = 1
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def completion(self):
        """The reply as the openai package's `ChatCompletion` (extra fields in model_extra)."""
        from openai.types.chat import ChatCompletion

        return ChatCompletion.model_validate(self.raw)


# Tokens spent for the record being processed (run_rows gives each row its own accumulator).
row_usage: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("row_usage", default=None)


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None, replica_lost: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        # the replica it went to stopped answering and was ejected: retry on another at once
        self.replica_lost = replica_lost


# Kinds of transport failure that mean the replica itself is gone, not this request.
_REPLICA_GONE = ("unreachable", "connection_error")


def _error_message(data: bytes) -> str:
    try:
        error = loads(data).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message)[:500]
    except Exception:
        return data[:200].decode("utf-8", "replace")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class ChatEngine:
    """Send chat requests to one endpoint and model, or to the replicas of one served model.

    `replicas`: a function listing the replicas ready now (dicts with base_url, optionally
    capacity, name, server_log), re-read every few seconds; requests go to the replica with the
    fewest outstanding requests for its capacity, and one that stops answering is ejected and
    its requests retried on the others (see pool.py). `concurrency.max` is then per replica.
    Use within one event loop; `await engine.aclose()` (or `async with engine`) at the end.
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        concurrency: ConcurrencyConfig | None = None,
        retry: RetryConfig | None = None,
        breaker: BreakerConfig | None = None,
        transport: str = "aiohttp",
        replicas: Callable[[], list[dict]] | None = None,
        balance: str = "least_outstanding",
        lost_grace_s: float = 10.0,
    ):
        self.endpoint = endpoint
        self.concurrency = concurrency or ConcurrencyConfig()
        self.retry = retry or RetryConfig()
        if endpoint.api_key is not None:
            register_secret(endpoint.api_key.get_secret_value(), f"the API key of {endpoint.describe()}")
        self.limiter = AdaptiveLimiter(self.concurrency)
        # payload bytes in flight: with whole documents as base64, requests, not their count,
        # are what a job's memory is made of
        self.budget = ByteBudget(self.concurrency.max_inflight_bytes)
        self.breaker = CircuitBreaker(breaker or BreakerConfig())
        self.pool = ReplicaPool(
            endpoint,
            self.concurrency.max,
            transport,
            source=replicas,
            policy=balance,
            max_waiting=self.concurrency.replica_max_waiting,
            lost_grace_s=lost_grace_s,
            on_resize=self.limiter.resize,
        )
        self.limiter.resize(max(1, self.pool.total_capacity()))
        self.usage = EngineUsage()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._failed: EndpointError | None = None
        self._rng = random.Random()
        self._tokenize: bool | None = None  # has the server a /tokenize? (None: not asked yet)

    # -- lifecycle

    async def __aenter__(self) -> "ChatEngine":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.pool.close()

    # -- checks

    async def verify(self) -> dict:
        """Check that the endpoint answers and lists our model; returns its /v1/models entry.
        With replicas: every listed replica is checked; those not answering are ejected, and
        the check fails only when none answers."""
        errors: list[EndpointError] = []
        for replica in list(self.pool.admitted()):
            try:
                return await self._verify_one(replica)
            except EndpointError as exc:
                if not self.pool.elastic:
                    raise
                errors.append(exc)
                self.pool.eject(replica, str(exc))
        if errors:
            raise EndpointError("; ".join(str(e) for e in errors))
        raise EndpointError(f"{self.endpoint.describe()}: no replica is listed")

    async def _verify_one(self, replica) -> dict:
        where = (
            self.endpoint.describe() if not self.pool.elastic else f"{self.endpoint.describe()} {replica.describe()}"
        )
        last = ""
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                status, data, _ = await replica.transport.request("GET", "/models")
            except TransportError as exc:
                if exc.kind == "unreachable":
                    raise EndpointError(f"{where} is unreachable: {exc}") from None
                last = str(exc)
            else:
                if status == 200:
                    try:
                        models = loads(data)["data"]
                    except Exception:
                        raise EndpointError(f"{where}: /models answered a body that is not a model list") from None
                    for card in models:
                        if card.get("id") == self.endpoint.model:
                            return card
                    served = ", ".join(str(card.get("id")) for card in models) or "none"
                    raise EndpointError(f"{where}: model not served (served: {served})")
                if status in (401, 403):
                    raise EndpointError(f"{where} rejected the API key (HTTP {status})")
                if status < 500:
                    raise EndpointError(f"{where}: /models answered HTTP {status}: {_error_message(data)}")
                last = f"HTTP {status}: {_error_message(data)}"
            if attempt < self.retry.max_attempts:
                await asyncio.sleep(self.retry.delay(attempt, self._rng.random()))
        raise EndpointError(f"{where}: /models kept failing ({last})")

    # -- token counts

    async def count_prompt_tokens(self, messages: list[dict], chat_template_kwargs: dict | None = None) -> int | None:
        """Prompt tokens of `messages` (text only, chat template applied) as the server's own
        tokenizer counts them: vLLM's POST /tokenize, at the server's root beside /v1. None when
        the endpoint has no such route or does not answer it; the caller keeps its upper bound."""
        replicas = self.pool.admitted()
        if self._tokenize is False or not replicas:
            return None
        replica = replicas[0]
        body: dict[str, Any] = {"model": self.endpoint.model, "messages": messages, "add_generation_prompt": True}
        if chat_template_kwargs:
            body["chat_template_kwargs"] = chat_template_kwargs
        root = replica.root_url
        try:
            status, data, _ = await replica.transport.request("POST", root + "/tokenize", encode_body(body))
        except TransportError as exc:
            log.info("token count: %s/tokenize failed (%s); the prompt's text is counted at a token a byte", root, exc)
            return None
        if status == 200:
            try:
                count = int(loads(data)["count"])
            except Exception:
                count = None
            if count is not None and count >= 0:
                self._tokenize = True
                return count
        if self._tokenize is None or status in (404, 405, 501):
            # asked once: an endpoint without the route keeps the bound for the rest of the job
            log.info(
                "token count: %s/tokenize answered HTTP %s; the prompt's text is counted at a token a byte",
                root,
                status,
            )
            self._tokenize = False
        return None

    # -- chat

    def build_body(
        self,
        messages: list[dict],
        response_model: type[BaseModel] | None = None,
        sampling: dict | None = None,
        max_tokens: int | None = None,
        extra_body: dict | None = None,
    ) -> dict:
        body: dict[str, Any] = {"model": self.endpoint.model, "messages": messages}
        if sampling:
            body.update(sampling)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if response_model is not None:
            body["response_format"] = response_format(response_model)
        if extra_body:
            body.update(extra_body)
        return body

    async def chat(
        self,
        messages: list[dict],
        response_model: type[BaseModel] | None = None,
        sampling: dict | None = None,
        max_tokens: int | None = None,
        extra_body: dict | None = None,
    ) -> ChatResult:
        """One chat completion. Raises RecordError (this record failed) or EndpointError.

        The body is serialised once. Image parts may carry a LazyImage url
        (StageContext.page_images): then the body's size is known before any image is read, and
        its bytes exist only while it is being written (see `_attempt`).
        """
        body = encode_body(self.build_body(messages, response_model, sampling, max_tokens, extra_body))
        data, attempts = await self._post_with_retries(body)
        return self._interpret(data, response_model, max_tokens, attempts)

    async def _post_with_retries(self, body: EncodedBody) -> tuple[dict, int]:
        where = self.endpoint.describe()
        failure: _Retryable | None = None
        attempt = 0
        lost = 0
        while attempt < self.retry.max_attempts:
            attempt += 1
            if self._failed is not None:
                raise self._copy_failure()
            epoch = await self.limiter.acquire()
            try:
                self.usage.attempts += 1
                data = await self._attempt(body)
            except _Retryable as exc:
                failure = exc
                if exc.replica_lost and lost < 4 * max(1, len(self.pool.replicas)):
                    # Not this request's fault and not an overload of the others: again, now,
                    # elsewhere, without using up an attempt.
                    lost += 1
                    attempt -= 1
                    self.usage.replica_retries += 1
                    continue
                if exc.kind in _OVERLOAD:
                    self.limiter.on_overload(epoch, f"{exc.kind}: {exc.message}")
            except RecordError:
                self.limiter.on_success()  # the server answered: not an overload signal
                self._record("bad_request", failed=False)
                raise
            else:
                self.limiter.on_success()
                return data, attempt
            finally:
                self.limiter.release()
            if attempt < self.retry.max_attempts:
                delay = self.retry.delay(attempt, self._rng.random())
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.retry.backoff_max_s))
                log.info(
                    "%s: attempt %d of %d failed (%s: %s); retrying in %.2f s%s",
                    where,
                    attempt,
                    self.retry.max_attempts,
                    failure.kind,
                    failure.message,
                    delay,
                    " (the server's Retry-After)" if failure.retry_after is not None else " (back-off)",
                )
                await asyncio.sleep(delay)
        assert failure is not None
        if self._failed is not None:
            raise self._copy_failure()
        if failure.kind == "unreachable":
            # nothing listens (or answers SYNs) there: every other row would fail the same way
            self._fail(f"{where} is unreachable after {self.retry.max_attempts} attempts: {failure.message}")
        self._record(failure.kind, failed=True)
        if self.breaker.tripped():
            self._fail_breaker()
        raise RecordError(
            failure.kind, f"{failure.message} (after {self.retry.max_attempts} attempts)", infrastructure=True
        )

    async def _attempt(self, body: EncodedBody) -> dict:
        # The payload budget covers the body while it exists: from its building (when aiohttp
        # writes the request) until it is sent, or until the answer with the openai transport.
        # A request waiting for its answer (most of a request's life) holds none of it.
        held = await self.budget.acquire(body.size)
        released = False

        def sent() -> None:
            nonlocal released
            if not released:
                released = True
                self.budget.release(held)

        try:
            replica = await self.pool.acquire()
        except NoReplicaLeft as exc:
            sent()
            self._fail(str(exc))
        try:
            status, data, retry_after = await replica.transport.request("POST", "/chat/completions", body, sent)
        except TransportError as exc:
            if self.pool.elastic and exc.kind in _REPLICA_GONE:
                self.pool.eject(replica, f"{exc.kind}: {exc}")
                raise _Retryable(exc.kind, f"{replica.describe()}: {exc}", replica_lost=True) from None
            raise _Retryable(exc.kind, str(exc)) from None
        finally:
            sent()
            self.pool.release(replica)
        replica.answered += 1
        if status == 200:
            try:
                parsed = loads(data)
                if not isinstance(parsed, dict) or not parsed.get("choices"):
                    raise ValueError("no choices")
                replica.count_tokens(parsed.get("usage"))
                return parsed
            except ValueError as exc:
                raise _Retryable("malformed_response", f"HTTP 200 with a malformed body ({exc})") from None
        message = _error_message(data)
        if status in _BAD_REQUEST:
            raise RecordError("bad_request", f"HTTP {status}: {message}")
        if status in (401, 403):
            self._fail(f"{self.endpoint.describe()} rejected the API key (HTTP {status})")
        if status == 404:
            self._fail(
                f"{self.endpoint.describe()} answered 404 (unknown model or wrong base_url): {message}; "
                "set the stage model's models.ALIAS.endpoint.model to a name /v1/models lists, and its "
                "base_url to the server's /v1"
            )
        if status in (408, 429) or status >= 500:
            raise _Retryable("server_error", f"HTTP {status}: {message}", _retry_after(retry_after))
        # anything else (e.g. 405, 409) is a misconfiguration, not a record problem
        self._fail(f"{self.endpoint.describe()} answered HTTP {status}: {message}")
        raise AssertionError("unreachable")

    def _interpret(
        self, data: dict, response_model: type[BaseModel] | None, max_tokens: int | None, attempts: int
    ) -> ChatResult:
        usage = Usage.from_response(data.get("usage"))
        self.usage.add(usage)
        self.usage.requests += 1
        current = row_usage.get()
        if current is not None:
            current.add(usage)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            self._record("malformed_response", failed=False)
            raise RecordError("malformed_response", "reply without a usable first choice", usage) from None
        content = message.get("content")
        # vLLM renamed reasoning_content to reasoning; read both
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        finish = choice.get("finish_reason")
        try:
            if finish == "length":
                budget = f"max_tokens={max_tokens}" if max_tokens is not None else "the context limit"
                raise RecordError("length", f"reply truncated at {budget}", usage)
            if content is None or not content.strip():
                if reasoning:
                    raise RecordError(
                        "reasoning_only", "the reply has reasoning but no answer (thinking never ended)", usage
                    )
                raise RecordError("empty", "the reply has no content", usage)
            parsed = parse_reply(response_model, content, usage) if response_model is not None else None
        except RecordError as exc:
            self._record(exc.reason, failed=False)
            raise
        self._record("ok", failed=False)
        return ChatResult(
            content=content,
            reasoning=reasoning,
            parsed=parsed,
            finish_reason=finish,
            usage=usage,
            model=data.get("model") or self.endpoint.model,
            attempts=attempts,
            raw=data,
        )

    # -- accounting and failing fast

    def _record(self, reason: str, failed: bool) -> None:
        self.outcomes[reason] += 1
        self.breaker.record(failed, reason)

    def _fail(self, message: str, summary: dict | None = None) -> None:
        if self._failed is None:
            self._failed = EndpointError(message, summary)
            log.error("%s", message)
        raise self._copy_failure()

    def _copy_failure(self) -> EndpointError:
        # a fresh instance per raise: concurrent tasks must not share one traceback
        assert self._failed is not None
        return EndpointError(str(self._failed), self._failed.summary)

    def _fail_breaker(self) -> None:
        summary = self.breaker.summary()
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["window_reasons"].items()))
        self._fail(
            f"{self.endpoint.describe()}: {summary['window_failures']} of the last {summary['window']} "
            f"requests failed after retries ({reasons}); failing the job so it can be retried later",
            summary,
        )

    def check_health(self) -> None:
        """End-of-job verdict: raise EndpointError if infrastructure failures dominate."""
        if self._failed is not None:
            raise self._copy_failure()
        if self.breaker.tripped(final=True):
            self._fail_breaker()

    def stats(self) -> dict:
        return {
            "endpoint": self.endpoint.base_url,
            "model": self.endpoint.model,
            "usage": self.usage.__dict__.copy(),
            "outcomes": dict(self.outcomes),
            "concurrency_limit": self.limiter.limit,
            "concurrency_increases": self.limiter.increases,
            "concurrency_decreases": self.limiter.decreases,
            "inflight_mb_peak": round(self.budget.peak / 2**20, 1),
            "inflight_budget_waits": self.budget.waits,
            "replicas": self.pool.stats(),
        }
