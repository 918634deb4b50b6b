"""Bad PDFs through the seed job: test_seed_shard.py covers every bad kind
through run_seed_shard in-process; this runs the seed job itself, the way a user does, and checks
that it exits 0 with exactly one failure row per bad document, the hang stopped by the worker's
CPU limit."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import pdf_factory
from conftest import SAMPLE_PDF_DIR
from helpers.reliability import ok, snakemake

pytestmark = pytest.mark.workflow

GOOD = ("MVT_Rnews.pdf", "residual-shadings.pdf")
# file name -> (builder, expected failure reason): one of each kind of bad PDF
BAD = {
    "truncated.pdf": (lambda: pdf_factory.truncated_pdf((SAMPLE_PDF_DIR / "zoo.pdf").read_bytes(), 0.5), "corrupt"),
    "encrypted.pdf": (pdf_factory.encrypted_pdf, "encrypted"),
    "zero_pages.pdf": (pdf_factory.zero_page_pdf, "empty"),
    "html.pdf": (pdf_factory.html_named_pdf, "not_pdf"),
    "hangs.pdf": (pdf_factory.hanging_pdf, "timeout"),
    "page_bomb.pdf": (pdf_factory.page_bomb_pdf, "too_large"),
}
GIANT = "giant_200in.pdf"  # odd but good: seeded within the pixel budget
PIXEL_BUDGET = 4_000_000
# Bound of the snakemake call: the rule's own runtime (minutes) is far larger; the hang must be
# stopped by the worker's CPU limit, not by a stuck job.
JOB_LIMIT_S = 60


def test_seed_job_with_bad_pdfs_exits_0_in_time_with_one_failure_each(tmp_path):
    workdir = tmp_path / "wf"
    pdf_dir = workdir / "pdfs"
    for name in GOOD:
        pdf_factory.write(pdf_dir / name, (SAMPLE_PDF_DIR / name).read_bytes())
    for name, (builder, _) in BAD.items():
        pdf_factory.write(pdf_dir / name, builder())
    pdf_factory.write(pdf_dir / GIANT, pdf_factory.giant_page_pdf(200))
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "seed": {
            "settings": {"dpi": 50, "max_pixels_per_page": PIXEL_BUDGET},
            # a tight CPU budget so the hanging file is stopped in seconds (a task's budget
            # is base + per page x chunk pages: 4 s here)
            "run": {"worker": {"cpu_seconds_base": 2.0, "cpu_seconds_per_page": 0.25, "chunk_pages": 8}},
        },
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))

    # A bound on the call, not a timing assert: the hang is stopped by the worker's CPU limit
    # (checked on its failure message below), never by this timeout.
    result = ok(snakemake(workdir, "results/seed/00000/failures.parquet", timeout=JOB_LIMIT_S + 40))
    assert "Finished jobid" in result.stderr and "seed" in result.stderr

    seed = workdir / "results" / "seed" / "00000"
    documents = pq.read_table(seed / "documents.parquet").to_pylist()
    failures = pq.read_table(seed / "failures.parquet").to_pylist()
    # every document exactly once: seeded or one failure row
    names = [Path(d["source"]).name for d in documents] + [Path(f["source"]).name for f in failures]
    assert sorted(names) == sorted((*GOOD, *BAD, GIANT))
    assert {Path(d["source"]).name for d in documents} == {*GOOD, GIANT}
    assert {Path(f["source"]).name: f["reason"] for f in failures} == {n: r for n, (_, r) in BAD.items()}
    assert all(f["message"] for f in failures)
    hang = next(f for f in failures if Path(f["source"]).name == "hangs.pdf")
    assert "CPU limit" in hang["message"]  # the worker's RLIMIT_CPU stopped it, not a wall clock

    pages = pq.read_table(seed / "pages.parquet", columns=["doc_id", "width", "height"]).to_pylist()
    giant_id = next(d["doc_id"] for d in documents if Path(d["source"]).name == GIANT)
    giant = [p for p in pages if p["doc_id"] == giant_id]
    assert len(giant) == 1 and 0 < giant[0]["width"] * giant[0]["height"] <= PIXEL_BUDGET
    assert sum(d["total_pages"] for d in documents) == len(pages) == 6 + 12 + 1
