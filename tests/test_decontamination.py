"""Decontamination and source dedup in the seed stage, driven through Snakemake.

The source folder holds the two smallest shipped sample PDFs (18 pages to seed), one of them twice, and three copies of
"benchmark" documents made here: one renamed (same bytes), one re-saved with other metadata and
another object layout (other bytes, same text) and one with a page removed. The benchmark folder
holds the originals. The three are excluded as `contaminated`, the second sample copy as a
`duplicate`, everything else is seeded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pymupdf
import pytest
import yaml

from conftest import copy_pdfs
from helpers.workflow import run_snakemake
from longdoc_sdg.seed.decontaminate import (
    DecontaminationConfig,
    hamming,
    load_index,
    name_key,
    perceptual_hash,
)
from pdf_factory import benchmark_pdf


@pytest.fixture(scope="module")
def samples(sample_pdfs):
    # The first two by name (MVT_Rnews, residual-shadings: also the smallest); the first sorts
    # before its copy, so the copy is the duplicate.
    return sample_pdfs[:2]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, samples):
    root = tmp_path_factory.mktemp("decon")
    bench = root / "benchmark"
    bench.mkdir()
    for seed, name in enumerate(("annual_report_2023.pdf", "city_brochure.pdf", "form_10k.pdf")):
        benchmark_pdf(bench / name, seed)
    source = copy_pdfs(samples, root / "source")
    shutil.copy(samples[0], source / "copy-of-first-sample.pdf")
    shutil.copy(bench / "annual_report_2023.pdf", source / "q3_update.pdf")  # renamed
    with pymupdf.open(bench / "city_brochure.pdf") as doc:  # re-saved: other metadata, layout
        doc.set_metadata({"title": "Visitor guide", "author": "Tourism office", "producer": "other tool"})
        doc.save(source / "visitor_guide.pdf", garbage=4, deflate=True, clean=True)
    with pymupdf.open(bench / "form_10k.pdf") as doc:  # a page removed
        doc.delete_page(3)
        doc.save(source / "filing_excerpt.pdf")
    samples = root / "samples.json"
    samples.write_text(
        json.dumps(
            [
                {
                    "doc_id": "annual_report_2023.pdf",
                    "question": "What was the total revenue of the utilities segment in the third quarter?",
                }
            ]
        )
    )
    return {"root": root, "bench": bench, "source": source, "samples": samples}


def test_name_key_normalises_names_and_urls():
    assert name_key("Annual_Report-2023.PDF") == "annualreport2023"
    assert name_key("https://x.org/docs/annual%20report%202023.pdf?dl=1") == "annualreport2023"
    assert name_key("sub/dir/annual report 2023.pdf") == "annualreport2023"
    assert name_key(None) is None


def test_perceptual_hash_survives_resolution_not_content():
    rng = np.random.default_rng(0)

    def page(blocks):  # a page-like image: dark and light blocks (text columns, pictures)
        return np.kron(blocks, np.ones((12, 12))).astype(np.uint8)

    base = page((rng.random((8, 6)) * 255).astype(np.uint8))
    big = np.kron(base, np.ones((5, 5), dtype=np.uint8))  # the same page at 5x the resolution
    other = page((rng.random((8, 6)) * 255).astype(np.uint8))
    assert hamming(perceptual_hash(base), perceptual_hash(big)) <= 4
    assert hamming(perceptual_hash(base), perceptual_hash(other)) > 12


def test_index_is_built_once_and_cached_by_content(folders, tmp_path):
    cfg = DecontaminationConfig(benchmarks=[{"name": "bench", "documents": str(folders["bench"])}])
    first = load_index(cfg, tmp_path / "cache")
    assert (first.files, first.fingerprinted) == (3, 3)
    again = load_index(cfg, tmp_path / "cache")
    assert (again.files, again.fingerprinted) == (3, 0)
    shutil.copy(folders["bench"] / "form_10k.pdf", tmp_path / "moved.pdf")  # same content elsewhere
    moved = DecontaminationConfig(benchmarks=[{"name": "b2", "documents": str(tmp_path), "samples": None}])
    assert load_index(moved, tmp_path / "cache").fingerprinted == 0


def test_seed_excludes_benchmark_documents_and_duplicates(folders, samples, tmp_path):
    benchmarks = [{"name": "MiniBench", "documents": str(folders["bench"]), "samples": str(folders["samples"])}]
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(folders["source"])}}},
        "sharding": {"settings": {"documents_per_shard": 20}},
        "seed": {"settings": {"dpi": 30}},
        "decontamination": {"settings": {"benchmarks": benchmarks}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, "results/seed/00000/documents.parquet", timeout=900)
    seed = tmp_path / "results" / "seed" / "00000"
    failures = {r["source"].rsplit("/", 1)[-1]: r for r in pq.read_table(seed / "failures.parquet").to_pylist()}
    seeded = {r["source"].rsplit("/", 1)[-1] for r in pq.read_table(seed / "documents.parquet").to_pylist()}

    assert seeded == {p.name for p in samples}
    assert set(failures) == {"q3_update.pdf", "visitor_guide.pdf", "filing_excerpt.pdf", "copy-of-first-sample.pdf"}
    for name, original, how in (
        ("q3_update.pdf", "annual_report_2023.pdf", "sha256"),
        ("visitor_guide.pdf", "city_brochure.pdf", "text"),
        ("filing_excerpt.pdf", "form_10k.pdf", "text"),
    ):
        row = failures[name]
        assert row["reason"] == "contaminated", row
        assert f"matches {original} of benchmark MiniBench by {how}" in row["message"], row
    duplicate = failures["copy-of-first-sample.pdf"]
    kept = [r for r in pq.read_table(seed / "documents.parquet").to_pylist() if r["source"].endswith(samples[0].name)]
    assert duplicate["reason"] == "duplicate" and kept[0]["doc_id"] in duplicate["message"]
    # Pages exist only for the seeded documents.
    pages = pq.read_table(seed / "pages.parquet", columns=["doc_id"]).column("doc_id").to_pylist()
    assert set(pages) == {r["doc_id"] for r in pq.read_table(seed / "documents.parquet").to_pylist()}


def test_questions_overlapping_the_benchmark_are_dropped_at_export(folders, tmp_path):
    from helpers.export_run import SyntheticRun, make_row, write_rows
    from longdoc_sdg.export.dataset import build_dataset

    run = SyntheticRun(tmp_path / "synthetic")
    stage = "whole_document_qa"
    questions = [
        "In the third quarter, what was the total revenue of the utilities segment in dollars?",  # 9-word overlap
        "What was the total revenue of the utilities segment?",  # 8 words, all inside theirs
        "How many tables does the annual review list on its pages about network costs?",  # no overlap
    ]
    rows = [
        make_row(
            stage,
            f"{stage}:d0:q{i}",
            "d0",
            [1, 2, 3, 4],
            question=q,
            answer="4",
            question_type="numerical_int",
            evidence_pages="[1, 2]",
            evidence_ok=True,
            quality_score=1,
            format_ok=True,
        )
        for i, q in enumerate(questions)
    ]
    write_rows(run.results / stage / "00000.parquet", stage, rows)
    out = tmp_path / "datasets"
    benchmarks = [{"name": "MiniBench", "documents": str(folders["bench"]), "samples": str(folders["samples"])}]
    summary = build_dataset(
        stage,
        run.dataset_inputs(stage, judged=False),
        str(out / "d.parquet"),
        str(out / "d.summary.json"),
        {"decontamination": {"benchmarks": benchmarks}},
    )
    assert summary["dropped"]["contaminated"] == 2
    hits = {h["row_id"]: h["message"] for h in summary["contaminated_questions"]}
    assert set(hits) == {f"{stage}:d0:q0", f"{stage}:d0:q1"}
    assert (
        "benchmark MiniBench" in hits[f"{stage}:d0:q0"] and "total revenue of the utilities" in hits[f"{stage}:d0:q0"]
    )
    kept = pq.read_table(out / "d.parquet").column("question").to_pylist()
    assert questions[2] in kept and questions[0] not in kept
    plain = build_dataset(
        stage, run.dataset_inputs(stage, judged=False), str(out / "p.parquet"), str(out / "p.summary.json"), {}
    )
    assert plain["dropped"]["contaminated"] == 0 and plain["kept"] == summary["kept"] + 2
