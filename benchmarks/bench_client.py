"""Client throughput against the fake OpenAI server with a fixed latency.

Scenarios (concurrency C, server latency L, ideal throughput C / L requests per second):
  image: one real page PNG of about 200 KB per request (base64 data URL), C=64, L=1.0 s
  text:  text only, C=64, L=0.2 s
For each, a bare `AsyncOpenAI` loop (C workers, default client) is measured side by side with our
engine on the real stage path (`run_rows` + `ShardWriter` journal), in the same invocation and
against the same server. The server runs in a separate process so it does not share the
client's event loop or core. Reported: sustained throughput over a window after a warm-up, as a
share of C / L, and client CPU per request. Exits 1 when the engine misses a target
(image < 0.9, text < 0.85).

    python benchmarks/bench_client.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from longdoc_sdg.engine import ChatEngine, ConcurrencyConfig, EndpointConfig, ShardWriter, image_part, run_rows
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"image": 0.90, "text": 0.85}
PROMPT = (
    "You are given one page of a document. Write one question a careful reader could answer from "
    "the page alone, then its answer. Keep the answer short and exact. "
) * 4


def find_pdf() -> Path | None:
    local = sorted((ROOT / "resources" / "sample_pdfs").glob("*.pdf"))
    if local:
        return local[0]
    # any sizeable PDF on the machine (documentation packages ship some)
    found = subprocess.run(
        "find / -xdev -name '*.pdf' -size +100k -not -path '/proc/*' 2>/dev/null | head -20",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return Path(found[0]) if found else None


def page_png(target_bytes: int = 200_000) -> tuple[bytes, str]:
    """A real rendered page near `target_bytes` (the DPI is chosen to get there)."""
    import pymupdf

    pdf = find_pdf()
    if pdf is None:
        # last resort: a synthetic page with text and drawings, still a real render
        doc = pymupdf.open()
        page = doc.new_page()
        for i in range(60):
            page.insert_text((40, 40 + i * 12), f"Line {i}: revenue grew {i * 1.7:.1f}% in region {i % 7}", fontsize=9)
            page.draw_rect(
                pymupdf.Rect(300 + i % 10 * 20, 500 + i // 10 * 20, 315 + i % 10 * 20, 515 + i // 10 * 20),
                color=(i % 3 / 2, 0.2, 0.6),
                fill=(0.1 * (i % 9), 0.5, 0.3),
            )
        source = "synthetic page"
    else:
        doc = pymupdf.open(pdf)
        source = str(pdf)
    best: tuple[float, bytes, str] | None = None
    for page_index in range(min(len(doc), 6)):
        for dpi in (72, 96, 110, 130, 150, 180, 220):
            png = doc[page_index].get_pixmap(dpi=dpi).tobytes("png")
            score = abs(len(png) - target_bytes)
            if best is None or score < best[0]:
                best = (score, png, f"{source} page {page_index + 1} at {dpi} dpi")
    assert best is not None
    return best[1], best[2]


def messages_for(kind: str, png: bytes | None, i: int) -> list[dict]:
    text = f"{PROMPT} Request {i}."
    if kind == "image":
        # encoded per request, as a stage does for each page
        return [{"role": "user", "content": [image_part(png), {"type": "text", "text": text}]}]
    return [{"role": "user", "content": text}]


class Window:
    """Sustained throughput over [start + warmup, start + warmup + measure].

    Each request counts by the share of its own duration that lies inside the window, so requests
    finishing in synchronised waves (all C at once every L seconds) do not make the count jump by
    C at the window's edges.
    """

    def __init__(self, warmup: float, measure: float):
        self.warmup, self.measure = warmup, measure
        self.start = time.monotonic()
        self.intervals: list[tuple[float, float]] = []
        self.cpu0: float | None = None
        self.cpu1: float | None = None

    @property
    def opens(self) -> float:
        return self.start + self.warmup

    @property
    def closes(self) -> float:
        return self.opens + self.measure

    def done(self, started: float) -> None:
        self.intervals.append((started, time.monotonic()))

    def running(self) -> bool:
        return time.monotonic() < self.closes

    async def sample_cpu(self) -> None:
        await asyncio.sleep(max(0.0, self.opens - time.monotonic()))
        self.cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, self.closes - time.monotonic()))
        self.cpu1 = time.process_time()

    def result(self, concurrency: int, latency: float) -> dict:
        work = 0.0
        for begin, end in self.intervals:
            inside = min(end, self.closes) - max(begin, self.opens)
            if inside > 0:
                work += inside / max(end - begin, 1e-9)
        rate = work / self.measure
        cpu_ms = (self.cpu1 - self.cpu0) / max(work, 1.0) * 1000
        return {
            "requests": round(work, 1),
            "rps": round(rate, 1),
            "ratio": round(rate / (concurrency / latency), 3),
            "cpu_ms_per_request": round(cpu_ms, 3),
        }


async def bare_openai(
    base_url: str, kind: str, png: bytes | None, c: int, latency: float, warmup: float, measure: float
) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench")
    window = Window(warmup, measure)
    counter = iter(range(10**9))

    async def worker() -> None:
        while window.running():
            started = time.monotonic()
            await client.chat.completions.create(
                model="fake-model", messages=messages_for(kind, png, next(counter)), max_tokens=64
            )
            window.done(started)

    sampler = asyncio.create_task(window.sample_cpu())
    await asyncio.gather(*(worker() for _ in range(c)))
    await sampler
    await client.close()
    return window.result(c, latency)


async def engine_run(
    base_url: str,
    kind: str,
    png: bytes | None,
    c: int,
    latency: float,
    warmup: float,
    measure: float,
    workdir: str,
    transport: str = "aiohttp",
) -> dict:
    endpoint = EndpointConfig(base_url=base_url, model="fake-model", api_key="bench")
    engine = ChatEngine(endpoint, concurrency=ConcurrencyConfig(min=1, max=c), transport=transport)
    writer = ShardWriter(
        os.path.join(workdir, f"{kind}-{transport}.parquet"),
        os.path.join(workdir, f"{kind}-{transport}.jsonl"),
        "bench",
        pa.schema([("answer", pa.string())]),
    )
    window = Window(warmup, measure)

    def rows():
        i = 0
        while window.running():
            yield {"row_id": f"r{i}", "doc_id": "d", "pages": [1], "i": i}
            i += 1

    async def process(row: dict, engine: ChatEngine) -> dict:
        started = time.monotonic()
        result = await engine.chat(messages_for(kind, png, row["i"]), max_tokens=64)
        window.done(started)
        return {"answer": result.content}

    sampler = asyncio.create_task(window.sample_cpu())
    summary = await run_rows(rows(), process, writer, engine, desc=f"bench-{kind}")
    await sampler
    writer.finalize(summary.expected_ids)
    await engine.aclose()
    return window.result(c, latency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows (noisier)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--compare-transports",
        action="store_true",
        help="also run the engine on its 'openai' (httpx) transport, for reference",
    )
    args = parser.parse_args()
    png, png_source = page_png()
    print(f"image: {len(png) / 1000:.0f} KB PNG from {png_source}")
    scale = 0.5 if args.quick else 1.0
    scenarios = [("image", 1.0, 4.0, 16.0), ("text", 0.2, 2.0, 10.0)]
    results = {}
    c = args.concurrency
    with tempfile.TemporaryDirectory() as workdir:
        for kind, latency, warmup, measure in scenarios:
            with spawn_fake_server("--latency", str(latency), "--max-num-seqs", str(4 * c)) as (_, base_url):
                image = png if kind == "image" else None
                base = asyncio.run(bare_openai(base_url, kind, image, c, latency, warmup * scale, measure * scale))
                ours = asyncio.run(
                    engine_run(base_url, kind, image, c, latency, warmup * scale, measure * scale, workdir)
                )
                results[kind] = {
                    "concurrency": c,
                    "latency_s": latency,
                    "ideal_rps": c / latency,
                    "bare_openai": base,
                    "engine": ours,
                    "target": TARGETS[kind],
                }
                if args.compare_transports:
                    results[kind]["engine_openai_transport"] = asyncio.run(
                        engine_run(
                            base_url, kind, image, c, latency, warmup * scale, measure * scale, workdir, "openai"
                        )
                    )

    print(
        f"\n{'scenario':<8} {'C':>3} {'L':>5} {'ideal/s':>8} | {'bare AsyncOpenAI':>22} | {'engine (run_rows)':>22} | target"
    )
    print(f"{'':<8} {'':>3} {'':>5} {'':>8} | {'ratio':>8} {'CPU ms/req':>13} | {'ratio':>8} {'CPU ms/req':>13} |")
    failed = False
    for kind, r in results.items():
        b, e = r["bare_openai"], r["engine"]
        ok = e["ratio"] >= r["target"]
        failed |= not ok
        print(
            f"{kind:<8} {r['concurrency']:>3} {r['latency_s']:>5.1f} {r['ideal_rps']:>8.0f} | "
            f"{b['ratio']:>8.3f} {b['cpu_ms_per_request']:>13.3f} | {e['ratio']:>8.3f} {e['cpu_ms_per_request']:>13.3f} | "
            f">= {r['target']:.2f} {'ok' if ok else 'MISSED'}"
        )
        if "engine_openai_transport" in r:
            o = r["engine_openai_transport"]
            print(
                f"{'':<8} {'':>3} {'':>5} {'':>8} | engine on openai transport: ratio {o['ratio']:.3f}, "
                f"CPU {o['cpu_ms_per_request']:.3f} ms/req"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"png_bytes": len(png), "png_source": png_source, "results": results}, indent=2)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
