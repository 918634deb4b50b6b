"""Peak memory of a whole-document stage job against the fake server.

    python benchmarks/bench_memory.py [--docs 50] [--baseline-docs 5] [--pages 50] [--latency 5] [--json out.json]

A seed shard of `--docs` documents of `--pages` pages each is built from real pages: every page
of resources/sample_pdfs/*.pdf rendered once at 144 dpi by the seed's own `render_page` (lossless
PNG, gray where the page has no colour), then reused, each document starting at a different
page so no document repeats a page. pages.parquet is written as the seed writes it (one row
group per document, zstd); documents.parquet follows docs/contracts.md.

`run_stage("whole_document_qa", ...)` then runs in a subprocess against the fake
OpenAI-compatible server (its own process, a fixed latency long enough that every request of
the shard is in flight at once, the worst case for memory) with the endpoint settings the
workflow passes by default (concurrency up to 256). Peak RSS is read with
`getrusage(RUSAGE_CHILDREN)` by a wrapper process whose only child is the job, so neither the
server nor the shard building counts. The same runs for `--baseline-docs` documents, side by
side; the ratio shows whether memory grows with the shard.

Exit status 1 when the large shard's peak is over 600 MB or over 1.5x the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

TARGET_MB = 600.0
# "Flat in shard size": 10x the documents may cost at most this much more peak memory.
FLAT_RATIO = 1.5
STAGE = "whole_document_qa"


def render_pool(dpi: float) -> list[dict]:
    """Every page of the sample PDFs, rendered once the way the seed renders them."""
    sys.modules.setdefault("pymupdf.layout", None)  # as in the seed workers: unused, slow to import
    import pymupdf

    from longdoc_sdg.seed.render import RenderOptions, render_page
    from longdoc_sdg.seed.shard import PAGES_SCHEMA

    rendered_columns = [name for name in PAGES_SCHEMA.names if name not in ("doc_id", "page_number")]

    pymupdf.TOOLS.mupdf_display_errors(False)
    options = RenderOptions(dpi=dpi)
    pool = []
    for pdf in sorted((ROOT / "resources" / "sample_pdfs").glob("*.pdf")):
        with pymupdf.open(pdf) as doc:
            for page in doc:
                rendered = render_page(page, options)
                pool.append({k: getattr(rendered, k) for k in rendered_columns})
    return pool


def build_shard(directory: Path, pool: list[dict], docs: int, pages: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longdoc_sdg.seed.shard import DOCUMENTS_SCHEMA, PAGES_SCHEMA

    if pages > len(pool):
        raise SystemExit(f"only {len(pool)} distinct pages to draw from; ask for at most that many per document")
    directory.mkdir(parents=True)
    documents = []
    png_bytes = 0
    # Same writer settings as the seed's _PagesWriter: one row group per document.
    with pq.ParquetWriter(
        directory / "pages.parquet", PAGES_SCHEMA, compression="zstd", use_dictionary=["doc_id"]
    ) as writer:
        for index in range(docs):
            doc_id = f"bench{index:04d}"
            rows = []
            for number in range(pages):
                page = pool[(index * 7 + number) % len(pool)]
                rows.append({"doc_id": doc_id, "page_number": number + 1, **page})
                png_bytes += len(page["png"])
            writer.write_table(pa.Table.from_pylist(rows, schema=PAGES_SCHEMA), row_group_size=pages)
            documents.append(
                {
                    "doc_id": doc_id,
                    "source_kind": "local",
                    "source": f"/bench/{doc_id}.pdf",
                    "url": None,
                    "date": None,
                    "total_pages": pages,
                    "extra": "{}",
                }
            )
    pq.write_table(pa.Table.from_pylist(documents, schema=DOCUMENTS_SCHEMA), directory / "documents.parquet")
    return {
        "docs": docs,
        "pages": docs * pages,
        "png_mb": png_bytes / 1e6,
        "pages_parquet_mb": (directory / "pages.parquet").stat().st_size / 1e6,
    }


def job(directory: Path, base_url: str, variant: dict) -> None:
    """The measured process: one stage job over one shard, as the workflow's run_stage.py runs it."""
    from longdoc_sdg.stages import run_stage

    # json output: the fake server answers schema-valid JSON, so rows succeed and are written in full
    params = {"output_format": "json"}
    if variant.get("image_transport"):
        params["image_transport"] = {"mode": variant["image_transport"]}
    endpoint = {"base_url": base_url, "model": "fake-model"}
    if variant.get("concurrency"):
        endpoint["concurrency"] = {"max": variant["concurrency"]}
    summary = run_stage(
        STAGE,
        inputs={"documents": str(directory / "documents.parquet"), "pages": str(directory / "pages.parquet")},
        output=str(directory / "out" / f"{STAGE}.parquet"),
        params=params,
        endpoint=endpoint,
        threads=1,
        journal_path=str(directory / "out" / f"{STAGE}.jsonl"),
    )
    (directory / "summary.json").write_text(json.dumps(summary, default=str))


def measure(directory: Path, base_url: str, variant: str) -> None:
    """Wrapper whose only child is the job: RUSAGE_CHILDREN is then the job's own peak."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--job", str(directory), base_url, variant])
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "returncode": done.returncode,
                "maxrss_kb": usage.ru_maxrss,
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
        )
    )


def run_case(directory: Path, base_url: str, variant: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(directory), base_url, json.dumps(variant)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"measuring wrapper failed:\n{out.stderr[-4000:]}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    if figures["returncode"] != 0:
        raise SystemExit(f"the stage job failed (exit {figures['returncode']}):\n{out.stderr[-4000:]}")
    summary = json.loads((directory / "summary.json").read_text())
    return {
        "peak_rss_mb": figures["maxrss_kb"] / 1024,
        "wall_s": round(figures["wall_s"], 2),
        "cpu_s": round(figures["cpu_s"], 2),
        "rows": summary.get("rows"),
        "ok": summary.get("ok"),
        "failed": summary.get("failed"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--baseline-docs", type=int, default=5)
    parser.add_argument("--pages", type=int, default=50, help="pages per document")
    parser.add_argument("--dpi", type=float, default=144.0)
    parser.add_argument("--latency", type=float, default=5.0, help="fake server seconds per request")
    parser.add_argument("--concurrency", type=int, help="engine concurrency max (default: the workflow's, 256)")
    parser.add_argument(
        "--image-transport", choices=["base64", "file"], help="stage image_transport.mode (default base64)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    # internal: the wrapper and the job processes
    parser.add_argument("--measure", nargs=3, metavar=("DIR", "URL", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--job", nargs=3, metavar=("DIR", "URL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job(Path(args.job[0]), args.job[1], json.loads(args.job[2]))
        return 0
    if args.measure:
        measure(Path(args.measure[0]), args.measure[1], args.measure[2])
        return 0
    variant = {"concurrency": args.concurrency, "image_transport": args.image_transport}

    from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"concurrency max {args.concurrency or 'default (256)'}, images {args.image_transport or 'base64'}, "
        f"fake server latency {args.latency:g}s"
    )
    start = time.monotonic()
    pool = render_pool(args.dpi)
    png_kb = sum(len(p["png"]) for p in pool) / len(pool) / 1000
    print(
        f"rendered {len(pool)} distinct pages at {args.dpi:g} dpi in {time.monotonic() - start:.1f}s; "
        f"mean PNG {png_kb:.0f} KB, {sum(p['is_gray'] for p in pool)} gray"
    )
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        shards = [build_shard(Path(tmp) / f"docs{n}", pool, n, args.pages) for n in (args.baseline_docs, args.docs)]
        del pool
        # max-num-seqs above the client's 256 so the server queues nothing: all requests in flight
        with spawn_fake_server("--latency", str(args.latency), "--max-num-seqs", "512") as (_, base_url):
            for shard in shards:
                cases.append({**shard, **run_case(Path(tmp) / f"docs{shard['docs']}", base_url, variant)})

    print(
        f"\n{'documents':>9} {'pages':>6} {'PNG MB':>7} {'rows ok/all':>11} {'wall s':>7} {'CPU s':>6} {'peak RSS MB':>12}"
    )
    for c in cases:
        print(
            f"{c['docs']:>9} {c['pages']:>6} {c['png_mb']:>7.0f} {str(c['ok']) + '/' + str(c['rows']):>11} "
            f"{c['wall_s']:>7.1f} {c['cpu_s']:>6.1f} {c['peak_rss_mb']:>12.0f}"
        )
    baseline, large = cases
    ratio = large["peak_rss_mb"] / baseline["peak_rss_mb"]
    print(
        f"\npeak RSS {large['docs']} vs {baseline['docs']} documents: {ratio:.2f}x "
        f"(flat: <= {FLAT_RATIO}x) for {large['pages'] / baseline['pages']:.0f}x the pages"
    )
    ok = large["peak_rss_mb"] <= TARGET_MB and ratio <= FLAT_RATIO
    print(
        f"\n{'PASS' if ok else 'FAIL'}: {large['peak_rss_mb']:.0f} MB for {large['docs']} x {args.pages} pages "
        f"(<= {TARGET_MB:.0f} MB), {ratio:.2f}x the {baseline['docs']}-document job (<= {FLAT_RATIO}x); "
        f"load {os.getloadavg()[0]:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "variant": variant,
                    "cases": cases,
                    "ratio": ratio,
                    "target_mb": TARGET_MB,
                    "flat_ratio": FLAT_RATIO,
                    "load_average": os.getloadavg()[0],
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
