"""Source dedup across shards, driven through Snakemake on real PDFs.

The source folder holds three real PDFs plus, sorting after them (so in later shards), an exact
copy of one and a re-saved excerpt of another (other metadata and object layout, one page
removed: other bytes, nearly the same text). Two documents per shard: each copy lands in a
different shard than its original. Each copy becomes a `duplicate` failure row naming the kept
document; a document added later (a new shard) is screened against the earlier ones without
reseeding them."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pymupdf
import pytest
import yaml

from test_workflow import run_snakemake

ORIGINALS = ("xts-faq.pdf", "zoo-design.pdf", "zoo-faq.pdf")


def _table(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _name(row) -> str:
    return row["source"].rsplit("/", 1)[-1]


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
    config = {
        "results_dir": "results",
        "source": {"kind": "local", "local": {"path": str(source)}},
        "sharding": {"documents_per_shard": 2},
        "seed": {"dpi": 24},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(workdir, *_seed_targets(["00000", "00001", "00002"]), timeout=900)
    return workdir, source


def test_copies_in_other_shards_are_duplicates_naming_the_kept_document(deduplicated):
    workdir, source = deduplicated
    seed = workdir / "results" / "seed"
    manifest = {
        _name(r): r
        for shard in ("00000", "00001", "00002")
        for r in _table(workdir / f"results/manifest/{shard}.parquet")
    }
    shard_of = {
        name: shard
        for shard in ("00000", "00001", "00002")
        for name in (_name(r) for r in _table(workdir / f"results/manifest/{shard}.parquet"))
    }
    # the copies sit in other shards than their originals
    assert shard_of["zz-copy-of-xts-faq.pdf"] != shard_of["xts-faq.pdf"]
    assert shard_of["zz-zoo-faq-excerpt.pdf"] != shard_of["zoo-faq.pdf"]

    documents = [r for shard in sorted(set(shard_of.values())) for r in _table(seed / shard / "documents.parquet")]
    failures = {_name(r): r for shard in set(shard_of.values()) for r in _table(seed / shard / "failures.parquet")}
    assert sorted({_name(r) for r in documents}) == sorted(ORIGINALS)
    assert len(documents) == len(ORIGINALS)  # each original seeded once
    assert set(failures) == {"zz-copy-of-xts-faq.pdf", "zz-zoo-faq-excerpt.pdf"}

    exact, near = failures["zz-copy-of-xts-faq.pdf"], failures["zz-zoo-faq-excerpt.pdf"]
    assert exact["reason"] == near["reason"] == "duplicate"
    assert "same content (sha256" in exact["message"] and manifest["xts-faq.pdf"]["doc_id"] in exact["message"]
    assert "near-duplicate text" in near["message"] and manifest["zoo-faq.pdf"]["doc_id"] in near["message"]

    exclusions = {r["doc_id"]: r for r in _table(seed / "exclusions.parquet")}
    assert exclusions[exact["doc_id"]]["kept_doc_id"] == manifest["xts-faq.pdf"]["doc_id"]
    assert exclusions[near["doc_id"]]["kept_doc_id"] == manifest["zoo-faq.pdf"]["doc_id"]
    assert exclusions[near["doc_id"]]["shard"] == shard_of["zz-zoo-faq-excerpt.pdf"]
    # pages only for the seeded documents
    pages = {
        d
        for shard in set(shard_of.values())
        for d in pq.read_table(seed / shard / "pages.parquet").column("doc_id").to_pylist()
    }
    assert pages == {r["doc_id"] for r in documents}


def test_a_later_copy_is_screened_without_reseeding_earlier_shards(deduplicated):
    workdir, source = deduplicated
    seed = workdir / "results" / "seed"
    before = {p: p.stat().st_mtime_ns for p in seed.glob("0000[0-2]/*.parquet")}
    shutil.copy(source / "zoo-design.pdf", source / "zzz-zoo-design-again.pdf")
    run_snakemake(workdir, *_seed_targets(["00000", "00001", "00002", "00003"]), timeout=900)

    assert {p: p.stat().st_mtime_ns for p in seed.glob("0000[0-2]/*.parquet")} == before
    (added,) = _table(workdir / "results/manifest/00003.parquet")
    assert _name(added) == "zzz-zoo-design-again.pdf"
    (failure,) = _table(seed / "00003" / "failures.parquet")
    assert failure["doc_id"] == added["doc_id"] and failure["reason"] == "duplicate"
    kept = [
        r
        for shard in ("00000", "00001")
        for r in _table(seed / shard / "documents.parquet")
        if _name(r) == "zoo-design.pdf"
    ]
    assert kept and kept[0]["doc_id"] in failure["message"]
    assert _table(seed / "00003" / "documents.parquet") == []
