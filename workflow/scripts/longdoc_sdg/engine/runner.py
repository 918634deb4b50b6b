"""run_rows: drive one shard's rows through an async `process` with the engine's concurrency."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from ..io import get_logger, progress
from ..rowstore import AccountingError, ShardWriter
from .budget import RowImages, row_images
from .client import ChatEngine, Usage, row_usage
from .errors import INFRA_REASONS, RecordError

log = get_logger("engine.runner")

DEFAULT_KEY_COLUMNS = ("row_id", "doc_id", "pages")
Process = Callable[[dict, Any], Awaitable[dict]]


@dataclass
class RunSummary:
    expected_ids: list[str]  # every input row id, in input order: pass to writer.finalize
    resumed: int = 0  # finished rows found in the journal
    processed: int = 0  # rows finished by this run
    ok: int = 0
    failed: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    usage: Usage = field(default_factory=Usage)


async def run_rows(
    rows: Iterable[dict],
    process: Process,
    writer: ShardWriter,
    engine: ChatEngine | None,
    key_columns: Iterable[str] = DEFAULT_KEY_COLUMNS,
    *,
    desc: str = "rows",
    total: int | None = None,
) -> RunSummary:
    """Run `process(row, engine) -> dict of stage columns` on every row not yet in the journal.

    Rows stream in: only about the engine's current concurrency limit (plus slack) are in flight,
    so a big shard is never materialised. A RecordError becomes a failure row; EndpointError (or
    any other exception: a bug must fail the job, not fill a shard with failures) cancels the rows
    in flight and propagates; every row finished before then is already in the journal.
    """
    key_columns = tuple(key_columns)
    if "row_id" not in key_columns:
        raise ValueError("key_columns must include row_id")
    # infrastructure failures of an earlier, aborted run get another try
    writer.redo(INFRA_REASONS)
    done = writer.done_ids()
    summary = RunSummary(expected_ids=[])
    if total is None and hasattr(rows, "__len__"):
        total = len(rows)  # type: ignore[arg-type]
    model = engine.endpoint.model if engine is not None else None

    tasks: set[asyncio.Task] = set()
    room = asyncio.Event()
    fatal: list[BaseException] = []
    bar = progress(total=total, desc=desc, unit="row")

    def capacity() -> int:
        limit = engine.limiter.limit if engine is not None else 8
        # a little over the limit: rows prepare their request (prompt, images) before they queue
        return limit + max(2, limit // 4)

    async def one(row: dict) -> None:
        usage = Usage()
        row_usage.set(usage)  # this task's own context: the engine adds each reply's tokens
        images = RowImages()
        row_images.set(images)  # the resolution its requests go out at (stages.base.RowCalls)
        keys = {k: row.get(k) for k in key_columns}
        try:
            result = await process(row, engine)
            out = {**keys, **result, "status": "ok", "failure_reason": None, "failure_message": None}
            out.setdefault("model", model)
            summary.ok += 1
        except RecordError as exc:
            out = {
                **keys,
                "status": "failed",
                "failure_reason": exc.reason,
                "failure_message": exc.message[:4000],
                "model": model,
            }
            summary.failed += 1
            summary.reasons[exc.reason] += 1
        out.update(usage.as_columns())
        out.update(images.as_columns())
        summary.usage.add(usage)
        writer.write(out)
        summary.processed += 1
        bar.update(1)

    def finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        room.set()
        if not task.cancelled() and task.exception() is not None:
            fatal.append(task.exception())

    seen: set[str] = set()
    try:
        for row in rows:
            row_id = row["row_id"]
            if row_id in seen:
                raise AccountingError(f"input row id {row_id} repeats")
            seen.add(row_id)
            summary.expected_ids.append(row_id)
            if row_id in done:
                summary.resumed += 1
                bar.update(1)
                continue
            while len(tasks) >= capacity() and not fatal:
                room.clear()
                await room.wait()
            if fatal:
                break
            task = asyncio.create_task(one(row))
            tasks.add(task)
            task.add_done_callback(finished)
        while tasks and not fatal:
            room.clear()
            await room.wait()
        if fatal:
            raise fatal[0]
        if engine is not None:
            engine.check_health()  # a short shard of mostly infrastructure failures fails too
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        log.info(
            "%s: %d rows (%d resumed, %d ok, %d failed %s); tokens %s; engine %s",
            desc,
            len(summary.expected_ids),
            summary.resumed,
            summary.ok,
            summary.failed,
            dict(summary.reasons),
            summary.usage.as_columns(),
            engine.stats() if engine is not None else None,
        )
    return summary
