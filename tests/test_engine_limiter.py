"""AIMD concurrency and the circuit breaker."""

import asyncio

import pytest

from longdoc_sdg.engine import BreakerConfig, ChatEngine, ConcurrencyConfig, EndpointConfig, RecordError, RetryConfig
from longdoc_sdg.engine.limiter import AdaptiveLimiter, CircuitBreaker
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer


def test_concurrency_config_bounds():
    assert ConcurrencyConfig(min=2, max=8).start == 8
    assert ConcurrencyConfig(min=2, max=8, initial=3).start == 3
    with pytest.raises(ValueError):
        ConcurrencyConfig(min=9, max=8)
    with pytest.raises(ValueError):
        ConcurrencyConfig(min=2, max=8, initial=1)


def test_additive_increase_multiplicative_decrease_within_limits():
    limiter = AdaptiveLimiter(ConcurrencyConfig(min=2, max=6, initial=4))
    for _ in range(4):
        limiter.on_success()
    assert limiter.limit == 5  # one step per limit's worth of successes
    for _ in range(100):
        limiter.on_success()
    assert limiter.limit == 6  # capped at max
    epoch = limiter.epoch
    limiter.on_overload(epoch)
    assert limiter.limit == 3
    limiter.on_overload(epoch)  # same overload period: no second cut
    assert limiter.limit == 3
    limiter.on_overload(limiter.epoch)
    limiter.on_overload(limiter.epoch)
    assert limiter.limit == 2  # floored at min


def test_limiter_blocks_and_wakes():
    async def go():
        limiter = AdaptiveLimiter(ConcurrencyConfig(min=1, max=4, initial=1))
        order = []

        async def user(i):
            await limiter.acquire()
            order.append(i)
            await asyncio.sleep(0.01)
            limiter.release()

        tasks = [asyncio.create_task(user(i)) for i in range(3)]
        await asyncio.sleep(0.001)
        assert limiter.in_flight == 1
        # a cancelled waiter must not leak a slot
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert limiter.in_flight == 0
        return order

    assert asyncio.run(go()) == [0, 2]


def test_breaker_window():
    breaker = CircuitBreaker(BreakerConfig(window=10, min_requests=4, max_error_rate=0.5))
    for _ in range(3):
        breaker.record(True, "server_error")
    assert not breaker.tripped()  # too few requests for a verdict mid-run
    assert breaker.tripped(final=True)
    breaker.record(False)
    assert breaker.tripped()  # 3 of 4
    for _ in range(10):
        breaker.record(False)
    assert not breaker.tripped(final=True)  # old failures slid out of the window


def test_engine_adapts_to_server_errors():
    with FakeOpenAIServer(latency_s=0.01, faults={"503": 0.25}, seed=5) as server:
        endpoint = EndpointConfig(base_url=server.base_url, model="fake-model")
        engine = ChatEngine(
            endpoint,
            concurrency=ConcurrencyConfig(min=2, max=16, initial=16),
            retry=RetryConfig(max_attempts=8, backoff_initial_s=0.005, backoff_max_s=0.02),
            breaker=BreakerConfig(max_error_rate=0.9),
        )
        seen = []

        async def go():
            async with engine:

                async def one(i):
                    seen.append(engine.limiter.limit)
                    try:
                        await engine.chat([{"role": "user", "content": f"a{i}"}])
                    except RecordError:
                        pass
                    seen.append(engine.limiter.limit)

                await asyncio.gather(*(one(i) for i in range(150)))

        asyncio.run(go())
        assert engine.limiter.decreases >= 2 and engine.limiter.increases >= 1
        assert min(seen) >= 2 and max(seen) <= 16
        assert server.stats()["max_in_flight"] <= 16


def test_engine_grows_from_initial_to_max():
    with FakeOpenAIServer(latency_s=0.005) as server:
        endpoint = EndpointConfig(base_url=server.base_url, model="fake-model")
        engine = ChatEngine(endpoint, concurrency=ConcurrencyConfig(min=1, max=6, initial=2))

        async def go():
            async with engine:
                await asyncio.gather(*(engine.chat([{"role": "user", "content": f"g{i}"}]) for i in range(80)))

        asyncio.run(go())
        assert engine.limiter.limit == 6
        assert server.stats()["max_in_flight"] <= 6


def test_byte_budget_fifo_oversize_alone_and_cancellation():
    from longdoc_sdg.engine.limiter import ByteBudget

    async def go():
        budget = ByteBudget(100)
        assert await budget.acquire(60) == 60
        order = []

        async def user(name, n, hold=0.01):
            await budget.acquire(n)
            order.append(name)
            await asyncio.sleep(hold)
            budget.release(n)

        big = asyncio.create_task(user("big", 250))  # larger than the budget: waits to go alone
        await asyncio.sleep(0)
        small = asyncio.create_task(user("small", 10))  # would fit, but queues behind big (FIFO)
        doomed = asyncio.create_task(user("doomed", 30))
        await asyncio.sleep(0.005)
        assert order == [] and budget.in_use == 60
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        budget.release(60)
        await asyncio.gather(big, small)
        assert order == ["big", "small"]
        assert budget.in_use == 0 and budget.peak == 250 and budget.waits == 3
        unlimited = ByteBudget(None)
        for _ in range(5):
            await unlimited.acquire(10**9)
        assert unlimited.in_use == 5 * 10**9

    asyncio.run(go())
