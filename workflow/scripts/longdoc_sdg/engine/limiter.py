"""Adaptive concurrency (AIMD) and the infrastructure circuit breaker."""

from __future__ import annotations

import asyncio
import collections

from ..io import get_logger
from .config import BreakerConfig, ConcurrencyConfig

log = get_logger("engine.limiter")


class AdaptiveLimiter:
    """A semaphore whose size grows by a step per window of successes and shrinks on overload.

    Each acquisition is stamped with the current epoch; only a failure from the current epoch
    shrinks the limit, so a burst of failures from one overloaded moment halves it once.
    """

    def __init__(self, config: ConcurrencyConfig):
        self.config = config
        self.max = config.max  # config.max per replica times the replicas admitted (resize)
        self.limit = config.start
        self.in_flight = 0
        self.epoch = 0
        self._successes = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.increases = 0
        self.decreases = 0

    async def acquire(self) -> int:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return self.epoch
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: hand the slot on
            else:
                self._waiters.remove(future)
            raise
        return self.epoch

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    def on_success(self) -> None:
        self._successes += 1
        # additive increase: one step per limit's worth of successes (about one round trip)
        if self._successes >= self.limit:
            self._successes = 0
            if self.limit < self.max:
                old = self.limit
                self.limit = min(self.max, self.limit + self.config.increase_step)
                self.increases += 1
                log.info("concurrency %d -> %d: %d requests succeeded since the last change", old, self.limit, old)
                self._wake()

    def resize(self, new_max: int) -> None:
        """Replicas joined or left: the ceiling follows their capacity, and the limit moves by
        the capacity gained or lost (a new replica is used at once, not after slow growth)."""
        new_max = max(self.config.min, new_max)
        if new_max == self.max:
            return
        self.limit = max(self.config.min, min(new_max, self.limit + new_max - self.max))
        self.max = new_max
        self._wake()

    def on_overload(self, epoch: int, reason: str = "overload") -> None:
        if epoch != self.epoch:
            return  # this failure belongs to a period already answered with a decrease
        self.epoch += 1
        self._successes = 0
        new_limit = max(self.config.min, int(self.limit * self.config.decrease_factor))
        if new_limit < self.limit:
            log.info("concurrency %d -> %d: the server is overloaded (%s)", self.limit, new_limit, reason)
            self.limit = new_limit
            self.decreases += 1


class ByteBudget:
    """A FIFO semaphore over bytes: the request payload the engine holds at once.

    `acquire(n)` waits until `n` more bytes fit under the capacity; a request larger than the
    whole capacity is admitted alone, when nothing else is held. First come, first served, so a
    large request is not starved by a stream of small ones. capacity None: no limit.
    """

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # most bytes held at once
        self.waits = 0  # acquisitions that had to wait
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.capacity is None or self.in_use == 0 or self.in_use + n <= self.capacity

    def _grant(self, n: int) -> None:
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    async def acquire(self, n: int) -> int:
        """Hold `n` bytes; returns `n`, the amount to pass to release."""
        if not self._waiters and self._fits(n):
            self._grant(n)  # no suspension on the fast path
            return n
        self.waits += 1
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled: hand the bytes on
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass  # already dropped by _wake
                self._wake()  # a large waiter at the head may have been holding others back
            raise
        return n

    def release(self, n: int) -> None:
        self.in_use -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():  # cancelled while queued
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._grant(n)
            future.set_result(None)


class CircuitBreaker:
    """Sliding window over the last finished requests: True = infrastructure failure."""

    def __init__(self, config: BreakerConfig):
        self.config = config
        self._window: collections.deque[tuple[bool, str]] = collections.deque(maxlen=config.window)
        self.totals: collections.Counter[str] = collections.Counter()

    def record(self, failed: bool, reason: str = "ok") -> None:
        self._window.append((failed, reason))
        self.totals[reason] += 1

    def error_rate(self) -> float:
        if not self._window:
            return 0.0
        return sum(1 for failed, _ in self._window if failed) / len(self._window)

    def tripped(self, final: bool = False) -> bool:
        """Over the threshold? `final` (end of a job) judges even a short window."""
        if not final and len(self._window) < self.config.min_requests:
            return False
        failures = sum(1 for failed, _ in self._window if failed)
        return failures > 0 and failures / len(self._window) > self.config.max_error_rate

    def summary(self) -> dict:
        window = collections.Counter(reason for _, reason in self._window)
        return {
            "window": len(self._window),
            "window_failures": sum(1 for failed, _ in self._window if failed),
            "window_reasons": dict(window),
            "totals": dict(self.totals),
        }
