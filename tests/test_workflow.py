"""The workflow as a user drives it: snakemake in a temporary directory, on real PDFs.

Covers issue #2's acceptance: per-shard seed jobs in the dry run, nothing to do on a second run,
a DPI change reruns the seeds and what depends on them only, one forced shard reruns one job."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pymupdf as fitz
import pytest
import yaml

from conftest import REPO, copy_pdfs

pytestmark = pytest.mark.workflow


def run_snakemake(workdir: Path, *args: str, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        "snakemake",
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def write_config(workdir: Path, pdf_dir: Path, **extra) -> dict:
    config = {
        "results_dir": "results",
        "source": {"kind": "local", "local": {"path": str(pdf_dir)}},
        "sharding": {"documents_per_shard": 2},
        "seed": {"dpi": 72},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule name -> count."""
    jobs, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("-"):
                continue
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, real_pdfs):
    """A workflow directory with four real PDFs seeded and OCR'd through the pdf-text engine."""
    workdir = tmp_path_factory.mktemp("wf")
    pdf_dir = copy_pdfs(real_pdfs[:4], workdir / "pdfs")
    write_config(workdir, pdf_dir)
    dry = run_snakemake(workdir, "-n")
    assert planned_jobs(dry.stdout) == {
        "all": 1,
        "fingerprint": 2,
        "screen_sources": 1,
        "ocr": 2,
        "seed": 2,
        "stats": 1,
        "report_figures": 1,
        "summary": 1,
    }
    run_snakemake(workdir)
    return workdir


def test_seed_tables_match_the_pdfs(seeded):
    results = seeded / "results"
    documents = pq.read_table(results / "seed" / "00000" / "documents.parquet").to_pylist()
    documents += pq.read_table(results / "seed" / "00001" / "documents.parquet").to_pylist()
    assert len(documents) == 4
    for doc in documents:
        shard = (
            "00000"
            if (results / "seed" / "00000" / "pages.parquet").exists()
            and doc["doc_id"]
            in pq.read_table(results / "seed" / "00000" / "documents.parquet").column("doc_id").to_pylist()
            else "00001"
        )
        pages = pq.read_table(results / "seed" / shard / "pages.parquet", filters=[("doc_id", "=", doc["doc_id"])])
        with fitz.open(doc["source"]) as pdf:
            assert doc["total_pages"] == pdf.page_count == pages.num_rows
            first = pages.slice(0, 1).to_pylist()[0]
            rect = pdf[0].rect
            assert abs(first["width"] - rect.width * first["dpi"] / 72) <= 1
            assert abs(first["height"] - rect.height * first["dpi"] / 72) <= 1
            decoded = fitz.Pixmap(first["png"])
            assert (decoded.width, decoded.height) == (first["width"], first["height"])


def test_ocr_rows_account_for_every_page(seeded):
    results = seeded / "results"
    for shard in ("00000", "00001"):
        pages = pq.read_table(results / "seed" / shard / "pages.parquet", columns=["doc_id", "page_number"])
        ocr = pq.read_table(results / "ocr" / f"{shard}.parquet")
        assert ocr.num_rows == pages.num_rows
        assert len(set(ocr.column("row_id").to_pylist())) == ocr.num_rows
        assert set(ocr.column("status").to_pylist()) <= {"ok", "failed"}


def test_second_run_has_nothing_to_do(seeded):
    result = run_snakemake(seeded, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_dpi_change_reruns_seed_and_dependents_only(seeded):
    config = yaml.safe_load((seeded / "config.yaml").read_text())
    config["seed"]["dpi"] = 96
    changed = seeded / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "workflow" / "Snakefile"),
            "--directory",
            str(seeded),
            "--configfile",
            str(changed),
            "--cores",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout) == {"all": 1, "ocr": 2, "seed": 2, "stats": 1, "report_figures": 1, "summary": 1}
    assert "params changed" in result.stdout.lower() or "Params have changed" in result.stdout


def test_forcing_one_shard_reruns_only_that_shard(seeded):
    target = "results/seed/00001/pages.parquet"
    result = run_snakemake(seeded, "-n", "--force", target)
    assert planned_jobs(result.stdout) == {"seed": 1}
    assert "00001" in result.stdout and "shard=00000" not in result.stdout


def test_bad_config_fails_with_the_key_named(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"source": {"kind": "s3"}}))
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "source.kind" in output and "finepdfs" in output
