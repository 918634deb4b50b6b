"""Replicas of one model behind one engine: which server gets the next request.

A served deployment may run several replicas (`replicas:` in its deployment file). The pool
keeps one transport per replica and sends each request to the admitted replica with the fewest
outstanding requests relative to its capacity (round robin is kept only as the benchmark's
baseline). It re-reads the replica list every few seconds (replicas that became ready late
join), samples vLLM's `/metrics` so a replica whose waiting queue grows gets no more requests
until it drains, ejects a replica that stops answering (the engine retries its requests on the
others) and re-admits it once `/health` and `/v1/models` answer again.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..io import get_logger
from .config import EndpointConfig
from .transport import loads, make_transport

log = get_logger("engine.pool")

POLICIES = ("least_outstanding", "round_robin")


class NoReplicaLeft(Exception):
    """Every replica of the endpoint is ejected (or none is listed) for longer than the grace."""


@dataclass(eq=False)
class Replica:
    base_url: str
    name: str
    capacity: int
    transport: Any
    server_log: str | None = None
    outstanding: int = 0
    requests: int = 0  # attempts sent to it
    answered: int = 0  # attempts it answered (any HTTP status)
    admitted: bool = True
    ejected_reason: str = ""
    ejections: int = 0
    # last /metrics sample: requests running / waiting on the server (every client's)
    running: float | None = None
    waiting: float | None = None
    tokens: dict = field(default_factory=lambda: {"prompt": 0, "completion": 0})

    def describe(self) -> str:
        return f"{self.name} at {self.base_url}"

    @property
    def root_url(self) -> str:
        """The server's root, where vLLM keeps /metrics, /health and /tokenize beside /v1."""
        return self.base_url.removesuffix("/v1")

    def count_tokens(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.tokens["prompt"] += int(usage.get("prompt_tokens") or 0)
            self.tokens["completion"] += int(usage.get("completion_tokens") or 0)


def parse_metrics(text: str) -> dict[str, float]:
    """Sum of each vLLM gauge/counter over its label sets, from Prometheus text."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


class ReplicaPool:
    """`source()` lists the replicas now ready (dicts with base_url and optionally capacity,
    name, server_log); None means one fixed endpoint (`endpoint.base_url`) that is never ejected
    (a manual endpoint: failures there are the engine's usual retries and fail-fast)."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        capacity: int,
        transport: str,
        source: Callable[[], list[dict]] | None = None,
        policy: str = "least_outstanding",
        max_waiting: int = 2,
        refresh_s: float = 2.0,
        metrics_s: float = 1.0,
        lost_grace_s: float = 10.0,
        on_resize: Callable[[int], None] | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown balancing policy {policy!r}: use one of {', '.join(POLICIES)}")
        self.endpoint = endpoint
        self.default_capacity = capacity
        self.transport_name = transport
        self.source = source
        self.policy = policy
        self.max_waiting = max_waiting
        self.refresh_s = refresh_s
        self.metrics_s = metrics_s
        self.lost_grace_s = lost_grace_s
        self.on_resize = on_resize
        self.replicas: list[Replica] = []
        self._by_url: dict[str, Replica] = {}
        self._room: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._rr = 0
        self._rng = random.Random()
        self._none_since: float | None = None
        self._session = None
        if source is None:
            self._add({"base_url": endpoint.base_url, "name": "endpoint"})
        else:
            self.refresh()

    @property
    def elastic(self) -> bool:
        return self.source is not None

    # -- membership

    def _add(self, info: dict) -> Replica:
        url = EndpointConfig(base_url=info["base_url"], model=self.endpoint.model).base_url
        capacity = self.default_capacity
        if info.get("capacity"):
            capacity = max(1, min(capacity, int(info["capacity"])))
        config = self.endpoint.model_copy(update={"base_url": url})
        replica = Replica(
            base_url=url,
            name=info.get("name") or f"replica {len(self.replicas)}",
            capacity=capacity,
            transport=make_transport(self.transport_name, config, capacity + 8),
            server_log=info.get("server_log"),
        )
        self.replicas.append(replica)
        self._by_url[url] = replica
        return replica

    def refresh(self) -> None:
        """Add the replicas the source lists and we do not know yet."""
        if self.source is None:
            return
        try:
            listed = self.source()
        except Exception as exc:  # a half-written or vanished list: keep what we have
            log.debug("replica list unreadable: %s", exc)
            return
        added = []
        for info in listed:
            url = EndpointConfig(base_url=info["base_url"], model=self.endpoint.model).base_url
            if url not in self._by_url:
                added.append(self._add(info))
        if added:
            if len(self.replicas) > len(added):  # not the first listing
                log.info(
                    "%s: new replica(s) ready: %s", self.endpoint.describe(), ", ".join(r.describe() for r in added)
                )
            self._changed()

    def admitted(self) -> list[Replica]:
        return [r for r in self.replicas if r.admitted]

    def total_capacity(self) -> int:
        return sum(r.capacity for r in self.admitted())

    def _changed(self) -> None:
        if self.on_resize is not None:
            self.on_resize(max(1, self.total_capacity()))
        if self._room is not None:
            self._room.set()

    def eject(self, replica: Replica, reason: str) -> None:
        if not self.elastic or not replica.admitted:
            return
        replica.admitted = False
        replica.ejected_reason = reason
        replica.ejections += 1
        left = len(self.admitted())
        log.warning(
            "%s: ejected %s (%s); %d replica(s) left", self.endpoint.describe(), replica.describe(), reason, left
        )
        self._changed()

    def readmit(self, replica: Replica) -> None:
        if replica.admitted:
            return
        replica.admitted = True
        replica.ejected_reason = ""
        log.info("%s: %s answers again; re-admitted", self.endpoint.describe(), replica.describe())
        self._changed()

    # -- choosing a replica

    def _has_room(self, replica: Replica) -> bool:
        if not replica.admitted or replica.outstanding >= replica.capacity:
            return False
        # The server's own queue is long (other clients, or more than it runs at once): hold
        # back until a sample shows it drained, but never starve it of our only request.
        if replica.waiting is not None and replica.waiting > self.max_waiting and replica.outstanding > 0:
            return False
        return True

    def _choose(self) -> Replica | None:
        if self.policy == "round_robin":
            admitted = self.admitted()
            if not admitted:
                return None
            replica = admitted[self._rr % len(admitted)]
            if not self._has_room(replica):
                return None  # strict rotation: wait for this one
            self._rr += 1
            return replica
        best: Replica | None = None
        best_load = 0.0
        for replica in self.replicas:
            if not self._has_room(replica):
                continue
            load = replica.outstanding / replica.capacity
            if best is None or load < best_load or (load == best_load and self._rng.random() < 0.5):
                best, best_load = replica, load
        return best

    async def acquire(self) -> Replica:
        """A replica with room (outstanding counted up); waits for one. Raises NoReplicaLeft
        once no replica has been admitted for lost_grace_s."""
        self._start_background()
        while True:
            replica = self._choose()
            if replica is not None:
                replica.outstanding += 1
                replica.requests += 1
                self._none_since = None
                return replica
            if not self.admitted():
                now = time.monotonic()
                if self._none_since is None:
                    self._none_since = now
                if now - self._none_since > self.lost_grace_s:
                    raise NoReplicaLeft(self.lost_message())
            assert self._room is not None
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass

    def release(self, replica: Replica) -> None:
        replica.outstanding -= 1
        if self._room is not None:
            self._room.set()

    def lost_message(self) -> str:
        details = "; ".join(f"{r.describe()}: {r.ejected_reason or 'not answering'}" for r in self.replicas)
        return f"{self.endpoint.describe()}: no replica left for {self.lost_grace_s:g}s ({details or 'none listed'})"

    # -- background: new replicas, metrics, probes of ejected ones

    def _start_background(self) -> None:
        if self._room is not None:
            return
        self._room = asyncio.Event()
        if self.elastic:
            self._tasks = [asyncio.create_task(self._watch(), name="replica-pool-watch")]

    async def _watch(self) -> None:
        next_refresh = time.monotonic() + self.refresh_s
        while True:
            await asyncio.sleep(self.metrics_s)
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self.refresh_s
                self.refresh()
            await asyncio.gather(*(self._sample(r) for r in self.replicas), return_exceptions=True)

    async def _get(self, url: str) -> tuple[int, bytes]:
        """One small GET of our own (metrics, probes): status 0 when nothing answered."""
        import aiohttp

        if self._session is None or self._session.closed:
            headers = {}
            if self.endpoint.api_key is not None:
                headers["Authorization"] = f"Bearer {self.endpoint.api_key.get_secret_value()}"
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5.0), headers=headers, trust_env=False
            )
        try:
            async with self._session.get(url) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return 0, b""

    async def _sample(self, replica: Replica) -> None:
        if replica.admitted:
            status, data = await self._get(f"{replica.root_url}/metrics")
            if status != 200:
                replica.waiting = replica.running = None
                return
            values = parse_metrics(data.decode("utf-8", "replace"))
            replica.running = values.get("vllm:num_requests_running")
            replica.waiting = values.get("vllm:num_requests_waiting")
            if replica.waiting is not None and replica.waiting <= self.max_waiting and self._room is not None:
                self._room.set()
            return
        # ejected: back once it lists our model again
        status, data = await self._get(f"{replica.base_url}/models")
        if status != 200:
            return
        try:
            ids = [card.get("id") for card in loads(data).get("data", [])]
        except Exception:
            return
        if self.endpoint.model in ids:
            self.readmit(replica)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        for replica in self.replicas:
            await replica.transport.close()

    def stats(self) -> list[dict]:
        return [
            {
                "name": r.name,
                "base_url": r.base_url,
                "capacity": r.capacity,
                "requests": r.requests,
                "answered": r.answered,
                "admitted": r.admitted,
                "ejections": r.ejections,
                "prompt_tokens": r.tokens["prompt"],
                "completion_tokens": r.tokens["completion"],
            }
            for r in self.replicas
        ]
