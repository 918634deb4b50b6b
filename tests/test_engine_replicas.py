"""The engine over several replicas of one model, with FAKE servers (the test double) as replicas:
least-outstanding balancing, capacity, late replicas, ejection with retries elsewhere,
re-admission, and failing only when no replica is left."""

import asyncio
import signal

import pyarrow.parquet as pq
import pytest

from helpers.engine_rows import STAGE, process, rows_with
from longdoc_sdg.engine import (
    ChatEngine,
    ConcurrencyConfig,
    EndpointConfig,
    EndpointError,
    RetryConfig,
    ShardWriter,
    run_rows,
)
from longdoc_sdg.engine.pool import parse_metrics
from longdoc_sdg.serve.procs import http_get
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer, spawn_fake_server

FAST_RETRY = RetryConfig(max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.05)


def engine_over(urls_box, per_replica=4, **kwargs):
    """An engine whose replica list is whatever urls_box holds when the pool re-reads it."""
    endpoint = EndpointConfig(base_url=urls_box[0]["base_url"], model="fake-model", request_timeout_s=10)
    engine = ChatEngine(
        endpoint,
        concurrency=ConcurrencyConfig(max=per_replica),
        retry=FAST_RETRY,
        replicas=lambda: list(urls_box),
        **kwargs,
    )
    engine.pool.refresh_s = 0.2
    engine.pool.metrics_s = 0.1
    return engine


def listing(*servers):
    return [{"base_url": s.base_url, "name": f"replica {i}"} for i, s in enumerate(servers)]


async def chat_many(engine, n, prefix="q"):
    async def one(i):
        return await engine.chat([{"role": "user", "content": f"{prefix} {i}"}], max_tokens=8)

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_least_outstanding_keeps_every_replica_full_and_the_slow_one_gets_less():
    with (
        FakeOpenAIServer(latency_s=0.05, max_num_seqs=4) as fast,
        FakeOpenAIServer(latency_s=0.15, max_num_seqs=4) as slow,
    ):

        async def go():
            async with engine_over(listing(fast, slow)) as engine:
                assert engine.limiter.limit == 8  # 4 per replica
                await chat_many(engine, 120)
                return engine.stats()

        stats = asyncio.run(go())
        assert fast.requests + slow.requests == 120
        # Capacity honoured: never more in flight on a replica than its share.
        assert fast.max_in_flight <= 4 and slow.max_in_flight <= 4
        assert fast.max_in_flight == 4 and slow.max_in_flight == 4
        # Three times faster: clearly more requests, not an even split as round robin would give.
        assert fast.requests > 2 * slow.requests
        by_name = {r["name"]: r for r in stats["replicas"]}
        assert by_name["replica 0"]["requests"] == fast.requests
        assert by_name["replica 1"]["completion_tokens"] > 0


def test_round_robin_baseline_splits_evenly():
    with FakeOpenAIServer(latency_s=0.01) as one, FakeOpenAIServer(latency_s=0.03) as two:

        async def go():
            async with engine_over(listing(one, two), balance="round_robin") as engine:
                await chat_many(engine, 40)

        asyncio.run(go())
        assert one.requests == two.requests == 20


def test_replica_listed_later_joins_a_running_engine():
    with FakeOpenAIServer(latency_s=0.05) as first, FakeOpenAIServer(latency_s=0.05) as late:
        box = listing(first)

        async def go():
            async with engine_over(box) as engine:
                await chat_many(engine, 16, "before")
                assert late.requests == 0
                box.append({"base_url": late.base_url, "name": "replica 1"})
                await asyncio.sleep(0.5)  # the pool re-reads the list every 0.2 s here
                assert engine.limiter.max == 8
                await chat_many(engine, 40, "after")

        asyncio.run(go())
        assert late.requests > 0
        assert first.requests + late.requests == 56


def test_killed_replica_is_ejected_and_every_row_lands_exactly_once(tmp_path):
    rows = rows_with([f"question {i}" for i in range(60)])
    out = tmp_path / "out.parquet"
    writer = ShardWriter(out, tmp_path / "journal.jsonl", "cfg", STAGE)
    with (
        spawn_fake_server("--latency", "0.1") as (victim, victim_url),
        spawn_fake_server("--latency", "0.1") as (_, survivor_url),
    ):
        box = [{"base_url": victim_url, "name": "replica 0"}, {"base_url": survivor_url, "name": "replica 1"}]

        async def go():
            async with engine_over(box) as engine:

                async def killer():
                    while engine.pool.replicas[0].answered < 5:
                        await asyncio.sleep(0.01)
                    victim.send_signal(signal.SIGKILL)  # mid-stage, requests in flight

                kill = asyncio.create_task(killer())
                summary = await run_rows(rows, process, writer, engine)
                await kill
                return summary, engine.stats(), engine.usage

        summary, stats, usage = asyncio.run(go())
    writer.finalize(summary.expected_ids)
    table = pq.read_table(out)
    assert table.column("row_id").to_pylist() == [r["row_id"] for r in rows]
    assert set(table.column("status").to_pylist()) == {"ok"}
    victim_stats, survivor_stats = stats["replicas"]
    assert not victim_stats["admitted"] and victim_stats["ejections"] == 1
    assert survivor_stats["admitted"] and survivor_stats["requests"] > victim_stats["answered"]
    assert usage.replica_retries >= 1  # requests in flight on the victim went elsewhere


def test_ejected_replica_is_readmitted_when_it_answers_again():
    with FakeOpenAIServer(latency_s=0.02) as steady:
        flaky = FakeOpenAIServer(latency_s=0.02)
        flaky.start()
        port = flaky.port
        box = listing(steady, flaky)

        async def go():
            async with engine_over(box) as engine:
                await chat_many(engine, 10, "warm")
                flaky.stop()
                await chat_many(engine, 20, "down")
                assert not engine.pool.replicas[1].admitted
                back = FakeOpenAIServer(latency_s=0.02)
                back.start(port=port)
                try:
                    for _ in range(100):
                        if engine.pool.replicas[1].admitted:
                            break
                        await asyncio.sleep(0.05)
                    assert engine.pool.replicas[1].admitted
                    await chat_many(engine, 20, "again")
                    return back.requests
                finally:
                    back.stop()

        assert asyncio.run(go()) > 0


def test_no_replica_left_fails_naming_every_replica():
    one, two = FakeOpenAIServer(), FakeOpenAIServer()
    one.start()
    two.start()
    box = listing(one, two)

    async def go():
        async with engine_over(box, lost_grace_s=0.5) as engine:
            await chat_many(engine, 4)
            one.stop()
            two.stop()
            await chat_many(engine, 8, "after")

    with pytest.raises(EndpointError) as caught:
        asyncio.run(go())
    message = str(caught.value)
    assert "no replica left" in message
    assert one.base_url in message and two.base_url in message


def test_fake_server_metrics_report_running_and_waiting():
    """The double's /metrics has vLLM's names; the pool reads them."""
    with FakeOpenAIServer(latency_s=0.3, max_num_seqs=2) as server:

        async def go():
            engine = engine_over(listing(server), per_replica=6)
            engine.pool.max_waiting = 10
            async with engine:
                task = asyncio.ensure_future(chat_many(engine, 6))
                await asyncio.sleep(0.15)
                status, body = await asyncio.to_thread(http_get, f"{server.url}/metrics")
                await task
                return status, body

        status, body = asyncio.run(go())
    assert status == 200
    values = parse_metrics(body.decode())
    assert values["vllm:num_requests_running"] == 2
    assert values["vllm:num_requests_waiting"] == 4


def test_long_waiting_queue_holds_new_requests_back():
    """A replica whose server queues more than replica_max_waiting gets none until it drains:
    the other replica takes them, though the engine's own per-replica limit had room."""
    with (
        FakeOpenAIServer(latency_s=0.2, max_num_seqs=1) as narrow,
        FakeOpenAIServer(latency_s=0.2, max_num_seqs=16) as wide,
    ):

        async def go():
            engine = engine_over(listing(narrow, wide), per_replica=16)
            engine.pool.max_waiting = 1
            async with engine:
                await chat_many(engine, 10, "warm")  # the pool starts sampling
                await asyncio.sleep(0.3)
                narrow.reset_stats()
                await chat_many(engine, 60)

        asyncio.run(go())
        # Without the metrics, least outstanding would leave up to 16 queued on `narrow`.
        assert narrow.requests < 20
