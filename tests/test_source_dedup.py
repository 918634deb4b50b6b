"""Source dedup across shards, driven through Snakemake on real PDFs.

The source folder holds three real PDFs plus, sorting after them (so in later shards), an exact
copy of one and a re-saved excerpt of another (other metadata and object layout, one page
removed: other bytes, nearly the same text); two image-only "scans" made here and a re-saved
copy of one of them; two distinct documents of a dozen words each (nearly white pages, which
must not pass for copies of each other). Five documents per shard (two shards, the fewest
jobs): the originals fill the first, so each copy lands in another shard than its original. Each copy becomes a `duplicate` failure row naming the kept document;
a document added later (a new shard) is screened against the earlier ones without reseeding
them."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pymupdf
import pytest
import yaml

from helpers.workflow import run_snakemake

ORIGINALS = ("xts-faq.pdf", "zoo-design.pdf", "zoo-faq.pdf")
# The notes sort after the originals and scans, so they share the second shard with the copies.
KEPT = (*ORIGINALS, "scan-a.pdf", "scan-b.pdf", "zy-note-1.pdf", "zy-note-2.pdf")
COPIES = ("zz-copy-of-xts-faq.pdf", "zz-zoo-faq-excerpt.pdf", "zz-scan-a-resaved.pdf")
SHARDS = ("00000", "00001")  # ten documents, five per shard
LATER_SHARD = "00002"


def _table(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _name(row) -> str:
    return row["source"].rsplit("/", 1)[-1]


def scan_pdf(path, seed: int, pages: int = 2) -> None:
    """Pages holding only a picture of random blocks (no text layer)."""
    rng = np.random.default_rng(seed)
    doc = pymupdf.open()
    for _ in range(pages):
        blocks = (rng.random((10, 8)) * 255).astype(np.uint8)
        gray = np.ascontiguousarray(np.kron(blocks, np.ones((20, 20), dtype=np.uint8)))
        picture = pymupdf.Pixmap(pymupdf.csGRAY, gray.shape[1], gray.shape[0], gray.tobytes(), False)
        doc.new_page(width=300, height=400).insert_image(pymupdf.Rect(20, 20, 280, 380), pixmap=picture)
    doc.save(path)


def note_pdf(path, number: int) -> None:
    doc = pymupdf.open()
    for page in (1, 2):
        doc.new_page(width=300, height=400).insert_text((40, 60), f"Note {number}, page {page} of 2", fontsize=12)
    doc.save(path)


def _seed_targets(shards) -> list[str]:
    return [f"results/seed/{shard}/{table}.parquet" for shard in shards for table in ("documents", "failures")]


@pytest.fixture(scope="module")
def deduplicated(tmp_path_factory, real_pdfs):
    by_name = {p.name: p for p in real_pdfs}
    missing = [name for name in ORIGINALS if name not in by_name]
    assert not missing, f"real PDFs missing: {missing}"
    workdir = tmp_path_factory.mktemp("dedup")
    source = workdir / "source"
    source.mkdir()
    for name in ORIGINALS:
        shutil.copy(by_name[name], source / name)
    shutil.copy(by_name["xts-faq.pdf"], source / "zz-copy-of-xts-faq.pdf")
    with pymupdf.open(by_name["zoo-faq.pdf"]) as doc:
        doc.set_metadata({"title": "FAQ excerpt", "author": "someone else", "producer": "another tool"})
        doc.delete_page(4)
        doc.save(source / "zz-zoo-faq-excerpt.pdf", garbage=4, deflate=True, clean=True)
    scan_pdf(source / "scan-a.pdf", seed=1)
    scan_pdf(source / "scan-b.pdf", seed=2)
    with pymupdf.open(source / "scan-a.pdf") as doc:
        doc.set_metadata({"title": "Scanned again"})
        doc.save(source / "zz-scan-a-resaved.pdf", garbage=4, deflate=True, clean=True)
    note_pdf(source / "zy-note-1.pdf", 1)
    note_pdf(source / "zy-note-2.pdf", 2)
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(source)}}},
        "sharding": {"settings": {"documents_per_shard": 5}},
        "seed": {"settings": {"dpi": 24}},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(workdir, *_seed_targets(SHARDS), timeout=900)
    return workdir, source


def test_copies_in_other_shards_are_duplicates_naming_the_kept_document(deduplicated):
    workdir, source = deduplicated
    seed = workdir / "results" / "seed"
    listed = {shard: _table(workdir / f"results/manifest/{shard}.parquet") for shard in SHARDS}
    manifest = {_name(r): r for rows in listed.values() for r in rows}
    shard_of = {_name(r): shard for shard, rows in listed.items() for r in rows}
    assert sorted(manifest) == sorted(KEPT + COPIES)
    # the copies sit in other shards than their originals
    assert shard_of["zz-copy-of-xts-faq.pdf"] != shard_of["xts-faq.pdf"]
    assert shard_of["zz-zoo-faq-excerpt.pdf"] != shard_of["zoo-faq.pdf"]
    assert shard_of["zz-scan-a-resaved.pdf"] != shard_of["scan-a.pdf"]

    documents = [r for shard in SHARDS for r in _table(seed / shard / "documents.parquet")]
    failures = {_name(r): r for shard in SHARDS for r in _table(seed / shard / "failures.parquet")}
    # each kept document seeded once, the two short notes and the two different scans included
    assert sorted(_name(r) for r in documents) == sorted(KEPT)
    assert sorted(failures) == sorted(COPIES)

    exact, near = failures["zz-copy-of-xts-faq.pdf"], failures["zz-zoo-faq-excerpt.pdf"]
    scan = failures["zz-scan-a-resaved.pdf"]
    assert exact["reason"] == near["reason"] == scan["reason"] == "duplicate"
    assert "same content (sha256" in exact["message"] and manifest["xts-faq.pdf"]["doc_id"] in exact["message"]
    assert "near-duplicate text" in near["message"] and manifest["zoo-faq.pdf"]["doc_id"] in near["message"]
    assert "same first pages" in scan["message"] and manifest["scan-a.pdf"]["doc_id"] in scan["message"]

    exclusions = {r["doc_id"]: r for r in _table(seed / "exclusions.parquet")}
    assert len(exclusions) == len(COPIES)
    for name, original in (
        ("zz-copy-of-xts-faq.pdf", "xts-faq.pdf"),
        ("zz-zoo-faq-excerpt.pdf", "zoo-faq.pdf"),
        ("zz-scan-a-resaved.pdf", "scan-a.pdf"),
    ):
        excluded = exclusions[failures[name]["doc_id"]]
        assert excluded["kept_doc_id"] == manifest[original]["doc_id"] and excluded["shard"] == shard_of[name]
    # pages only for the seeded documents
    pages = {d for shard in SHARDS for d in pq.read_table(seed / shard / "pages.parquet").column("doc_id").to_pylist()}
    assert pages == {r["doc_id"] for r in documents}


def test_a_later_copy_is_screened_without_reseeding_earlier_shards(deduplicated):
    workdir, source = deduplicated
    seed = workdir / "results" / "seed"
    before = {p: p.stat().st_mtime_ns for shard in SHARDS for p in (seed / shard).glob("*.parquet")}
    shutil.copy(source / "zoo-design.pdf", source / "zzz-zoo-design-again.pdf")
    run_snakemake(workdir, *_seed_targets((*SHARDS, LATER_SHARD)), timeout=900)

    assert {p: p.stat().st_mtime_ns for shard in SHARDS for p in (seed / shard).glob("*.parquet")} == before
    (added,) = _table(workdir / f"results/manifest/{LATER_SHARD}.parquet")
    assert _name(added) == "zzz-zoo-design-again.pdf"
    (failure,) = _table(seed / LATER_SHARD / "failures.parquet")
    assert failure["doc_id"] == added["doc_id"] and failure["reason"] == "duplicate"
    kept = [r for shard in SHARDS for r in _table(seed / shard / "documents.parquet") if _name(r) == "zoo-design.pdf"]
    assert kept and kept[0]["doc_id"] in failure["message"]
    assert _table(seed / LATER_SHARD / "documents.parquet") == []


def test_screen_prefers_contaminated_to_duplicate_and_keeps_the_first_listed(tmp_path):
    """Two copies of a benchmark document in two shards are both `contaminated` (the first is
    never "kept" for the second to duplicate); of two copies of a plain document the one in the
    earlier shard is kept."""
    import pyarrow as pa

    from longdoc_sdg.seed.dedup import fingerprint_shard, screen_sources
    from pdf_factory import benchmark_pdf

    bench, source = tmp_path / "bench", tmp_path / "source"
    bench.mkdir()
    source.mkdir()
    benchmark_pdf(bench / "report.pdf", seed=7)
    benchmark_pdf(source / "plain.pdf", seed=8)
    shutil.copy(bench / "report.pdf", source / "renamed.pdf")
    with pymupdf.open(bench / "report.pdf") as doc:
        doc.set_metadata({"title": "other"})
        doc.save(source / "resaved.pdf", garbage=4, deflate=True, clean=True)
    shutil.copy(source / "plain.pdf", source / "plain-copy.pdf")
    shards = {"00000": ["renamed.pdf", "plain.pdf"], "00001": ["resaved.pdf", "plain-copy.pdf"]}
    decontamination = {"benchmarks": [{"name": "Bench", "documents": str(bench)}]}
    tables = []
    for shard, names in shards.items():
        rows = [
            {
                "doc_id": name,
                "source_kind": "local",
                "source": str(source / name),
                "url": None,
                "date": None,
                "extra": "{}",
            }
            for name in names
        ]
        manifest = tmp_path / f"{shard}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), manifest)
        tables.append(str(tmp_path / "seed" / shard / "fingerprints.parquet"))
        fingerprint_shard(str(manifest), tables[-1], {}, decontamination, threads=1)
    out = tmp_path / "seed" / "exclusions.parquet"
    summary = screen_sources(tables, str(out), decontamination, str(tmp_path / "cache"))

    excluded = {r["doc_id"]: r for r in _table(out)}
    assert summary == {"documents": 4, "excluded": {"contaminated": 2, "duplicate": 1}}
    assert {name: r["reason"] for name, r in excluded.items()} == {
        "renamed.pdf": "contaminated",
        "resaved.pdf": "contaminated",
        "plain-copy.pdf": "duplicate",
    }
    assert "report.pdf of benchmark Bench by sha256" in excluded["renamed.pdf"]["message"]
    assert "report.pdf of benchmark Bench by text" in excluded["resaved.pdf"]["message"]
    assert excluded["plain-copy.pdf"]["kept_doc_id"] == "plain.pdf" and excluded["plain-copy.pdf"]["shard"] == "00001"
