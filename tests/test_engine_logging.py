"""Retries, back-offs and concurrency changes reach the job log at INFO, with their reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from longdoc_sdg.engine import ChatEngine, ConcurrencyConfig, EndpointConfig, RetryConfig
from longdoc_sdg.engine.limiter import AdaptiveLimiter
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer, FakeServerConfig


@contextlib.contextmanager
def engine_log():
    """INFO records of the package logger (our job loggers do not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("longdoc_sdg")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_concurrency_changes_are_logged_with_the_reason():
    limiter = AdaptiveLimiter(ConcurrencyConfig(min=1, max=8, initial=8))
    with engine_log() as records:
        limiter.on_overload(limiter.epoch, "server_error: HTTP 503")
        for _ in range(limiter.limit):
            limiter.on_success()
    messages = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert messages == [
        "concurrency 8 -> 4: the server is overloaded (server_error: HTTP 503)",
        "concurrency 4 -> 5: 4 requests succeeded since the last change",
    ]


def test_a_retry_is_logged_with_attempt_reason_and_delay():
    config = FakeServerConfig(schedule=["500", "ok"])
    with FakeOpenAIServer(config) as server, engine_log() as records:
        endpoint = EndpointConfig(base_url=server.base_url, model="fake-model")
        engine = ChatEngine(endpoint, retry=RetryConfig(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02))

        async def once():
            async with engine:
                return await engine.chat([{"role": "user", "content": "hello"}])

        asyncio.run(once())
    retries = [r.getMessage() for r in records if "attempt 1 of 3 failed" in r.getMessage()]
    assert len(retries) == 1 and records[0].levelno == logging.INFO
    assert "retrying in" in retries[0] and "(back-off)" in retries[0]
