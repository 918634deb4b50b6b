"""The workflow as a user drives it: snakemake in a temporary directory, on real PDFs.

Parsing and dry runs write nothing (the manifest is a checkpoint job), per-shard seed jobs once
the manifest exists, nothing to do on a second run, a DPI change reruns the seeds and what depends
on them only, run settings rerun nothing, a sharding change is a clear error, one forced shard
reruns one job."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pymupdf as fitz
import pytest
import yaml

from conftest import copy_pdfs
from helpers.workflow import planned_jobs, run_snakemake

pytestmark = pytest.mark.workflow


def write_config(workdir: Path, pdf_dir: Path, **extra) -> dict:
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "sharding": {"settings": {"documents_per_shard": 2}},
        "seed": {"settings": {"dpi": 72}},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, real_pdfs):
    """A workflow directory with four real PDFs seeded and OCR'd through the pdf-text engine."""
    workdir = tmp_path_factory.mktemp("wf")
    pdf_dir = copy_pdfs(real_pdfs[:4], workdir / "pdfs")
    write_config(workdir, pdf_dir)
    # Before the manifest exists a dry run plans the manifest job (a checkpoint) and writes nothing.
    dry = run_snakemake(workdir, "-n")
    assert planned_jobs(dry.stdout) == {"all": 1, "manifest": 1}
    assert not (workdir / "results").exists()
    run_snakemake(workdir, "results/manifest/index.json")
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


@pytest.mark.parametrize("args", [["-n"], ["--lint"], ["--rulegraph"], ["--dag"], ["--report", "report.html"]])
def test_parsing_and_planning_write_no_results(tmp_path, sample_pdfs, args):
    write_config(tmp_path, copy_pdfs(sample_pdfs[:2], tmp_path / "pdfs"))
    result = run_snakemake(tmp_path, *args, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "results").exists()


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


def dry_run_with(seeded: Path, change) -> subprocess.CompletedProcess:
    """`snakemake -n` with the run's config changed by `change(config)`."""
    config = yaml.safe_load((seeded / "config.yaml").read_text())
    change(config)
    changed = seeded / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = run_snakemake(seeded, "-n", "--configfile", str(changed))
    assert result.returncode == 0, result.stderr
    return result


def test_dpi_change_reruns_seed_and_dependents_only(seeded):
    result = dry_run_with(seeded, lambda c: c["seed"]["settings"].update(dpi=96))
    assert planned_jobs(result.stdout) == {"all": 1, "ocr": 2, "seed": 2, "stats": 1, "report_figures": 1, "summary": 1}
    assert "params changed" in result.stdout.lower() or "Params have changed" in result.stdout


def test_seed_run_settings_rerun_nothing(seeded):
    def change(config):
        config["seed"]["run"] = {
            "download": {"concurrency": 2, "timeout_s": 5, "deadline_s": 60},
            "worker": {"memory_mb": 2048, "cpu_seconds_per_page": 9, "chunk_pages": 4},
            "max_document_pages": 500,
            "png_compression_level": 6,
        }
        config["stages"] = {"ocr": {"run": {"concurrency": {"max": 3}, "retry": {"max_attempts": 2}}}}

    result = dry_run_with(seeded, change)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout


def test_a_sharding_change_is_a_clear_error(seeded):
    config = yaml.safe_load((seeded / "config.yaml").read_text())
    config["sharding"]["settings"]["documents_per_shard"] = 3
    (seeded / "resharded.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(seeded, "-n", "--configfile", str(seeded / "resharded.yaml"), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "sharding.settings.documents_per_shard is 3" in output and "made with 2" in output
    assert "new results_dir" in output


def test_a_new_document_reruns_the_manifest_job_only(seeded, real_pdfs):
    added = seeded / "pdfs" / "added.pdf"
    added.write_bytes(real_pdfs[4].read_bytes())
    try:
        result = run_snakemake(seeded, "-n")
    finally:
        added.unlink()
    # What the new shard needs is known once the manifest job ran; nothing finished reruns.
    assert planned_jobs(result.stdout) == {"all": 1, "manifest": 1}


def test_a_dead_server_is_forgotten_by_a_run_not_by_a_dry_run(seeded, tmp_path):
    """A server an earlier, SIGKILLed run left published: only a run that executes jobs
    unpublishes it (onstart; its clients then serve again); a dry run leaves every file as it
    was."""
    import json
    import shutil

    workdir = tmp_path / "wf"
    shutil.copytree(seeded, workdir, symlinks=True)
    serve = workdir / "results" / "serve"
    (serve / "servers").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    runtime = serve / "ghost.runtime.json"
    runtime.write_text(json.dumps({"instance": "i1", "base_url": "http://127.0.0.1:9/v1"}))
    record = serve / "servers" / "ghost.json"
    record.write_text(
        json.dumps(
            {
                "launcher": "local",
                "deployment": "ghost",
                "pid": gone.pid,
                "pgid": gone.pid,
                "start_time": 1,  # never the pid's start time: the wrapper is gone
                "instance": "i1",
                "stop_grace_s": 0,
                "runtime_path": str(runtime),
                "heartbeat_path": str(serve / "ghost.heartbeat"),
                "bound_path": str(serve / "ghost.bound.json"),
            }
        )
    )
    result = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert record.exists() and runtime.exists()
    run_snakemake(workdir, "--forcerun", "summary")  # a run with a job to execute
    assert not record.exists() and not runtime.exists()


def test_forcing_one_shard_reruns_only_that_shard(seeded):
    target = "results/seed/00001/pages.parquet"
    result = run_snakemake(seeded, "-n", "--force", target)
    assert planned_jobs(result.stdout) == {"seed": 1}
    assert "00001" in result.stdout and "shard=00000" not in result.stdout


def test_bad_config_fails_with_the_key_named(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"source": {"settings": {"kind": "s3"}}}))
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "source.settings.kind" in output and "finepdfs" in output
