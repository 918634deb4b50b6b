"""Rows, a row handler and an engine for the runner tests against the fake server (no tests here)."""

from __future__ import annotations

import asyncio

import pyarrow as pa
from pydantic import BaseModel, Field

from longdoc_sdg.engine import (
    BreakerConfig,
    ChatEngine,
    ConcurrencyConfig,
    EndpointConfig,
    RetryConfig,
    ShardWriter,
    run_rows,
)

STAGE = pa.schema([("question", pa.string()), ("answer", pa.string()), ("score", pa.int64())])


FAST_RETRY = RetryConfig(max_attempts=6, backoff_initial_s=0.01, backoff_max_s=0.05)


class QA(BaseModel):
    question: str
    answer: str
    score: int = Field(ge=0, le=2)


def rows_with(texts):
    return [
        {"row_id": f"r{i:04d}", "doc_id": f"d{i // 10}", "pages": [i % 7 + 1], "text": t} for i, t in enumerate(texts)
    ]


def make_engine(base_url, timeout=5.0, retry=FAST_RETRY, breaker=None, concurrency=None):
    endpoint = EndpointConfig(base_url=base_url, model="fake-model", request_timeout_s=timeout)
    return ChatEngine(
        endpoint, concurrency=concurrency or ConcurrencyConfig(max=32), retry=retry, breaker=breaker or BreakerConfig()
    )


async def process(row, engine):
    result = await engine.chat([{"role": "user", "content": row["text"]}], response_model=QA, max_tokens=64)
    return {"question": result.parsed.question, "answer": result.parsed.answer, "score": result.parsed.score}


KILL_ROWS = 120


def run_kill_shard(out, journal, base_url) -> None:
    """The shard of the kill-and-resume test: 120 rows, 8 in flight (run in a child process to
    be SIGKILLed, then again to resume, and in the test's own process for a clean reference)."""
    rows = rows_with([f"kill row {i}" for i in range(KILL_ROWS)])
    writer = ShardWriter(out, journal, "cfg", STAGE)

    async def go():
        async with make_engine(base_url, concurrency=ConcurrencyConfig(max=8)) as engine:
            return await run_rows(rows, process, writer, engine)

    summary = asyncio.run(go())
    writer.finalize(summary.expected_ids)
