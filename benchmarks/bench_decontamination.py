"""Decontamination against a benchmark folder of 100 PDFs, after the first index build.

    python benchmarks/bench_decontamination.py [--benchmark-docs 100] [--sources 60] [--json out.json]

Makes a benchmark folder (text PDFs of 8 pages, a tenth of them image-only) and a source set:
renamed copies, re-saved copies, copies with a page removed, and as many unrelated documents.
1. Cold: `load_index` fingerprints every benchmark PDF (and caches it).
2. Warm, as every later seed job: `load_index` from the cache, then every source document checked
   the way the seed checks it (name, sha256, MinHash/LSH text or perceptual hash), against the
   naive way in the same process: exact Jaccard of shingle sets against every benchmark document.
Exit status 1 when the warm pass (index load + all checks) takes a minute or more, or a copy is
missed, or an unrelated document is flagged.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

import pymupdf  # noqa: E402

from longdoc_sdg.seed.decontaminate import (  # noqa: E402
    DecontaminationConfig,
    file_sha256,
    load_index,
    perceptual_hash,
    words,
)

WORDS = [f"w{i}" for i in range(3000)]


def make_pdf(path: Path, seed: int, pages: int = 8, image_only: bool = False) -> None:
    rng = random.Random(seed)
    doc = pymupdf.open()
    for number in range(pages):
        page = doc.new_page(width=420, height=595)
        if image_only:
            pix = pymupdf.Pixmap(pymupdf.csGRAY, pymupdf.IRect(0, 0, 42, 60), False)
            pix.set_rect(pix.irect, (rng.randrange(256),))
            for _ in range(12):
                x, y = rng.randrange(36), rng.randrange(52)
                pix.set_rect(pymupdf.IRect(x, y, x + 6, y + 8), (rng.randrange(256),))
            page.insert_image(page.rect, stream=pix.tobytes("png"))
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(180))
            page.insert_textbox(pymupdf.Rect(30, 30, 390, 565), f"Part {number + 1}. {text}", fontsize=8)
    doc.save(path)


def page_content(path: Path, first_pages: int) -> tuple[str, list[bytes]]:
    """What the seed hands the check: the text layer and the first pages' PNGs."""
    with pymupdf.open(path) as doc:
        text = "\n".join(page.get_text() for page in doc)
        pngs = [page.get_pixmap(dpi=72, colorspace=pymupdf.csGRAY).tobytes("png") for page in list(doc)[:first_pages]]
    return text, pngs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark-docs", type=int, default=100)
    parser.add_argument("--sources", type=int, default=60, help="source documents (half copies, half unrelated)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-decon-"))
    try:
        bench, source, cache = work / "bench", work / "source", work / "cache"
        bench.mkdir()
        source.mkdir()
        for i in range(args.benchmark_docs):
            make_pdf(bench / f"bench_{i:03d}.pdf", i, image_only=i % 10 == 9)
        expected: dict[str, bool] = {}
        for j in range(args.sources // 2):
            original = bench / f"bench_{(j * 7) % args.benchmark_docs:03d}.pdf"
            kind = j % 3
            target = source / f"source_copy_{j:03d}.pdf"
            if kind == 0:
                shutil.copy(original, target)
            else:
                with pymupdf.open(original) as doc:
                    if kind == 2:
                        doc.delete_page(doc.page_count - 1)
                    doc.set_metadata({"title": f"re-saved {j}"})
                    doc.save(target, garbage=4, deflate=True)
            expected[target.name] = True
        for j in range(args.sources - args.sources // 2):
            target = source / f"source_new_{j:03d}.pdf"
            make_pdf(target, 10_000 + j, image_only=j % 10 == 9)
            expected[target.name] = False
        cfg = DecontaminationConfig(benchmarks=[{"name": "bench", "documents": str(bench)}])

        started = time.monotonic()
        cold = load_index(cfg, cache)
        cold_s = time.monotonic() - started

        contents = {p.name: page_content(p, cfg.image_pages) for p in sorted(source.glob("*.pdf"))}
        started = time.monotonic()
        index = load_index(cfg, cache)
        load_s = time.monotonic() - started
        found: dict[str, str | None] = {}
        how: dict[str, str] = {}
        for name, (text, pngs) in contents.items():
            match = (
                index.match_name(name) or index.match_sha(file_sha256(source / name)) or index.match_content(text, pngs)
            )
            found[name] = match.file if match else None
            if match:
                how[match.how] = how.get(match.how, 0) + 1
        check_s = time.monotonic() - started - load_s
        warm_s = load_s + check_s

        # The naive way: exact shingle-set Jaccard of each source against every benchmark text.
        k = cfg.shingle_words
        started = time.monotonic()
        bench_sets = {}
        for p in sorted(bench.glob("*.pdf")):
            with pymupdf.open(p) as doc:
                tokens = [w for page in doc for w in words(page.get_text())]
            bench_sets[p.name] = {" ".join(tokens[i : i + k]) for i in range(max(1, len(tokens) - k + 1))}
        for text, pngs in contents.values():
            tokens = words(text)
            theirs = {" ".join(tokens[i : i + k]) for i in range(max(1, len(tokens) - k + 1))}
            for other in bench_sets.values():
                _ = len(theirs & other) / max(1, len(theirs | other))
            for png in pngs:
                perceptual_hash(_gray(png))
        naive_s = time.monotonic() - started

        missed = sorted(n for n, copy in expected.items() if copy and not found[n])
        false_hits = sorted(n for n, copy in expected.items() if not copy and found[n])
        figures = {
            "benchmark_docs": args.benchmark_docs,
            "sources": len(contents),
            "cold_index_s": round(cold_s, 2),
            "warm_index_load_s": round(load_s, 3),
            "warm_checks_s": round(check_s, 3),
            "warm_total_s": round(warm_s, 3),
            "naive_all_pairs_s": round(naive_s, 3),
            "naive_over_ours": round(naive_s / max(warm_s, 1e-9), 2),
            "fingerprinted_cold": cold.fingerprinted,
            "fingerprinted_warm": index.fingerprinted,
            "matched_by": how,
            "missed": missed,
            "false_hits": false_hits,
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        ok = warm_s < 60 and not missed and not false_hits and index.fingerprinted == 0
        print("target (warm pass < 60 s, every copy found, no false hit):", "met" if ok else "MISSED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gray(png: bytes):
    from longdoc_sdg.seed.decontaminate import png_gray

    return png_gray(png)


if __name__ == "__main__":
    sys.exit(main())
