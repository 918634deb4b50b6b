"""Throughput of one engine spread over N replicas of a model (issue 10), FAKE servers (the test
double) as replicas, each in its own process.

Each replica serves K requests at once (the rest queue, like vLLM's --max-num-seqs) and takes L
seconds per request, so N replicas can do at most N*K/L requests per second. The engine gets the
replica list the way a stage does (a function it re-reads) and `concurrency.max = K` (per
replica). Measured: sustained throughput (completions between the 10th and the 90th percentile
of completion times) as a share of the ideal.

Targets: >= 0.90 of N*K/L for N = 1, 2, 4, 8; with one of 4 replicas 3x slower, >= 0.85 of the
ideal sum of capacities (3*K/L + K/(3L)) with least-outstanding balancing, printed side by side
with round robin measured in the same run, which least-outstanding must beat. Exit 1 otherwise.

    python benchmarks/bench_replicas.py [--capacity 8] [--latency 0.5] [--rounds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

from longdoc_sdg.engine import ChatEngine, ConcurrencyConfig, EndpointConfig, RetryConfig
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

SCALE_TARGET = 0.90
SKEW_TARGET = 0.85


async def drive(urls: list[str], capacity: int, total: int, balance: str) -> tuple[float, dict]:
    listing = [{"base_url": url, "name": f"replica {i}"} for i, url in enumerate(urls)]
    endpoint = EndpointConfig(base_url=urls[0], model="fake-model", request_timeout_s=60)
    engine = ChatEngine(
        endpoint,
        concurrency=ConcurrencyConfig(max=capacity),
        retry=RetryConfig(max_attempts=2),
        replicas=lambda: listing,
        balance=balance,
    )
    done: list[float] = []

    async def one(i: int) -> None:
        await engine.chat([{"role": "user", "content": f"request {i}: write one short question"}], max_tokens=16)
        done.append(time.monotonic())

    async with engine:
        await asyncio.gather(*(one(i) for i in range(total)))
        stats = engine.stats()
    done.sort()
    lo, hi = done[int(0.1 * total)], done[int(0.9 * total)]
    sustained = (int(0.9 * total) - int(0.1 * total)) / (hi - lo)
    return sustained, {r["name"]: r["requests"] for r in stats["replicas"]}


def measure(latencies: list[float], capacity: int, rounds: int, balance: str) -> dict:
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(spawn_fake_server("--latency", str(lat), "--max-num-seqs", str(capacity), quiet=True))[
                1
            ]
            for lat in latencies
        ]
        ideal = sum(capacity / lat for lat in latencies)
        total = max(200, int(rounds * len(latencies) * capacity))
        rate, per_replica = asyncio.run(drive(urls, capacity, total, balance))
    return {
        "replicas": len(latencies),
        "latencies_s": latencies,
        "capacity": capacity,
        "balance": balance,
        "requests": total,
        "ideal_rps": round(ideal, 2),
        "measured_rps": round(rate, 2),
        "ratio": round(rate / ideal, 3),
        "requests_per_replica": per_replica,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=8, help="K: requests each replica runs at once")
    parser.add_argument("--latency", type=float, default=0.5, help="L: seconds per request")
    parser.add_argument("--rounds", type=int, default=20, help="requests per replica slot (total = rounds*N*K)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    K, L = args.capacity, args.latency
    print(f"load average at start: {os.getloadavg()[0]:.2f}; K={K}, L={L:g}s, rounds={args.rounds}")

    results: dict = {"scale": [], "skew": {}}
    ok = True
    print(f"\n{'N':>3} {'ideal req/s':>12} {'measured':>10} {'ratio':>6}  target >= {SCALE_TARGET}")
    for n in (1, 2, 4, 8):
        row = measure([L] * n, K, args.rounds, "least_outstanding")
        results["scale"].append(row)
        passed = row["ratio"] >= SCALE_TARGET
        ok &= passed
        print(
            f"{n:>3} {row['ideal_rps']:>12.1f} {row['measured_rps']:>10.1f} {row['ratio']:>6.3f}  "
            f"{'ok' if passed else 'BELOW TARGET'}"
        )

    skewed = [L, L, L, 3 * L]
    print(f"\n4 replicas, one 3x slower (latencies {skewed}); ideal = sum of capacities K/L_i")
    print(f"{'balance':>18} {'ideal req/s':>12} {'measured':>10} {'ratio':>6}  requests per replica")
    for balance in ("least_outstanding", "round_robin"):
        row = measure(skewed, K, args.rounds, balance)
        results["skew"][balance] = row
        share = ", ".join(str(v) for v in row["requests_per_replica"].values())
        print(f"{balance:>18} {row['ideal_rps']:>12.1f} {row['measured_rps']:>10.1f} {row['ratio']:>6.3f}  {share}")
    lor, rr = results["skew"]["least_outstanding"]["ratio"], results["skew"]["round_robin"]["ratio"]
    skew_ok = lor >= SKEW_TARGET and lor > rr
    ok &= skew_ok
    print(
        f"least-outstanding / round robin = {lor / rr:.2f}x; target: least-outstanding >= {SKEW_TARGET} "
        f"and above round robin: {'ok' if skew_ok else 'BELOW TARGET'}"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    results["passed"] = ok
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
