"""The workflow as a user drives it: snakemake in a temporary directory, on real PDFs.

Parsing and dry runs write nothing (the manifest is a checkpoint job), the seed tables match
the PDFs, a sharding change is a clear error, a new document reruns the manifest job only, one
forced shard reruns one job, a dead server's record is forgotten by a run only. The finished
run is the shared fake-server run (tests/helpers/fake_run.py); what a config change reruns is
checked on it in test_workflow_fake_server.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pymupdf as fitz
import pytest
import yaml

from conftest import copy_pdfs
from helpers.fake_run import PDF_NAMES, SHARDS
from helpers.workflow import planned_jobs, run_snakemake, two_at_a_time

pytestmark = pytest.mark.workflow

PLANNING = {"dry-run": ["-n"], "lint": ["--lint"], "rulegraph": ["--rulegraph"], "dag": ["--dag"]}
PLANNING["report"] = ["--report", "report.html"]


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
def planning_runs(tmp_path_factory, sample_pdfs):
    """Each planning command in a fresh directory (two at a time: independent parses)."""

    def planning(name, args):
        workdir = tmp_path_factory.mktemp(name)
        write_config(workdir, copy_pdfs(sample_pdfs[:2], workdir / "pdfs"))
        return lambda: (workdir, run_snakemake(workdir, *args, check=False))

    return two_at_a_time({name: planning(name, args) for name, args in PLANNING.items()})


@pytest.mark.parametrize("command", list(PLANNING))
def test_parsing_and_planning_write_no_results(planning_runs, command):
    workdir, result = planning_runs[command]
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (workdir / "results").exists()
    if command == "dry-run":
        # Before the manifest exists a dry run plans the manifest job (a checkpoint) only.
        assert planned_jobs(result.stdout) == {"all": 1, "manifest": 1}


def test_seed_tables_match_the_pdfs(fake_run):
    documents = []
    for shard in SHARDS:
        seed = fake_run.results / "seed" / shard
        of_shard = pq.read_table(seed / "documents.parquet").to_pylist()
        documents += of_shard
        for doc in of_shard:
            pages = pq.read_table(seed / "pages.parquet", filters=[("doc_id", "=", doc["doc_id"])])
            with fitz.open(fake_run.dir / doc["source"]) as pdf:
                assert doc["total_pages"] == pdf.page_count == pages.num_rows
                first = pages.slice(0, 1).to_pylist()[0]
                rect = pdf[0].rect
                assert abs(first["width"] - rect.width * first["dpi"] / 72) <= 1
                assert abs(first["height"] - rect.height * first["dpi"] / 72) <= 1
                decoded = fitz.Pixmap(first["png"])
                assert (decoded.width, decoded.height) == (first["width"], first["height"])
    assert sorted(Path(d["source"]).name for d in documents) == sorted(PDF_NAMES)


@pytest.fixture(scope="module")
def plans(fake_run, real_pdfs, tmp_path_factory):
    """Dry runs on the finished run: a sharding change, one forced shard, and (on a copy) a new
    document in the source folder."""
    folder = tmp_path_factory.mktemp("plans")
    resharded = fake_run.changed_config(
        lambda c: c["sharding"]["settings"].update(documents_per_shard=3), folder / "resharded.yaml"
    )
    added = fake_run.copy(folder / "added")
    extra = next(p for p in real_pdfs if p.name not in PDF_NAMES)
    (added.dir / "pdfs" / "added.pdf").write_bytes(extra.read_bytes())
    return two_at_a_time(
        {
            "resharded": lambda: fake_run.snakemake("-n", configfile=resharded),
            "forced": lambda: fake_run.snakemake("-n", "--force", "results/seed/00001/pages.parquet"),
            "added": lambda: added.snakemake("-n"),
        }
    )


def test_a_sharding_change_is_a_clear_error(plans):
    result = plans["resharded"]
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "sharding.settings.documents_per_shard is 3" in output and "made with 2" in output
    assert "new results_dir" in output


def test_a_new_document_reruns_the_manifest_job_only(plans):
    result = plans["added"]
    assert result.returncode == 0, result.stderr[-3000:]
    # What the new shard needs is known once the manifest job ran; nothing finished reruns.
    assert planned_jobs(result.stdout) == {"all": 1, "manifest": 1}


def test_forcing_one_shard_reruns_only_that_shard(plans):
    result = plans["forced"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result.stdout) == {"seed": 1}
    assert "00001" in result.stdout and "shard=00000" not in result.stdout


def test_a_dead_server_is_forgotten_by_a_run_not_by_a_dry_run(fake_run, tmp_path):
    """A server an earlier, SIGKILLed run left published: only a run that executes jobs
    unpublishes it (onstart; its clients then serve again); a dry run leaves every file as it
    was."""
    import json

    run = fake_run.copy(tmp_path / "wf")
    serve = run.results / "serve"
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
    result = run.snakemake("-n")
    assert "Nothing to be done" in result.stdout + result.stderr
    assert record.exists() and runtime.exists()
    result = run.snakemake("--forcerun", "summary")  # a run with a job to execute
    assert result.returncode == 0, result.stderr[-3000:]
    assert not record.exists() and not runtime.exists()


def test_bad_config_fails_with_the_key_named(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"source": {"settings": {"kind": "s3"}}}))
    result = run_snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "source.settings.kind" in output and "finepdfs" in output
