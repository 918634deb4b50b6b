"""Hostile inputs end to end, one shared Snakemake run: a source folder with link loops, links
leaving it and a FIFO next to good PDFs, and a FAKE endpoint (a test double) that echoes the API
key in its 4xx and 5xx bodies. The run finishes, every hostile entry is one failure row, and
neither the key nor a byte from outside the folder is in any file the run wrote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import SAMPLE_PDF_DIR
from helpers.memory import run_measured, seed_job_memory_limit_mb
from helpers.workflow import snakemake_cmd
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

pytestmark = pytest.mark.workflow

KEY = "echoed-key-91d2e6a4b7c3f058"
OUTSIDE_MARKER = b"%PDF-1.4 OUTSIDE-THE-SOURCE-FOLDER"
HOSTILE = ("a.pdf", "b.pdf", "outside.pdf", "passwd.pdf", "fifo.pdf")


def snakemake(workdir: Path, *args: str, env: dict, timeout: int = 900):
    return subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout, env=env)


def hostile_source(folder: Path, outside: Path) -> Path:
    folder.mkdir(parents=True)
    for pdf in sorted(SAMPLE_PDF_DIR.glob("*.pdf"))[:2]:
        (folder / pdf.name).write_bytes(pdf.read_bytes())
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(OUTSIDE_MARKER)
    (folder / "a.pdf").symlink_to(folder / "b.pdf")
    (folder / "b.pdf").symlink_to(folder / "a.pdf")
    (folder / "outside.pdf").symlink_to(outside / "secret.pdf")
    (folder / "passwd.pdf").symlink_to("/etc/passwd")
    os.mkfifo(folder / "fifo.pdf")
    return folder


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    source = hostile_source(root / "pdfs", root / "outside")
    workdir = root / "wf"
    workdir.mkdir()
    env = {**os.environ, "HOSTILE_KEY": KEY}
    faults = ["--fault", "400=0.3", "--fault", "500=0.3"]
    with spawn_fake_server("--api-key-env", "HOSTILE_KEY", "--echo-key-in-errors", *faults, env=env) as (_, url):
        endpoint = {"base_url": url, "model": "fake-model", "api_key_env": "HOSTILE_KEY"}
        config = {
            "results_dir": "results",
            "source": {"settings": {"kind": "local", "local": {"path": str(source)}}},
            "seed": {"settings": {"dpi": 36}},
            "models": {"fake": {"endpoint": endpoint}},
            "stages": {
                "ocr": {"settings": {"engine": "pdf-text"}},
                "text_qa": {
                    "model": "fake",
                    "settings": {"num_records": 8},
                    "run": {
                        "retry": {"max_attempts": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.02},
                        "error_budget": {"max_error_rate": 1.0},
                    },
                },
            },
        }
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        dry = snakemake(workdir, "-n", env=env)
        assert dry.returncode == 0, dry.stderr[-3000:]  # a link loop must not abort planning
        # Measured by getrusage: the largest peak of Snakemake and every job it ran.
        result, peak_mb = run_measured(snakemake_cmd(workdir), timeout=900, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        yield workdir, peak_mb, result


def written_files(workdir: Path):
    for folder in (workdir / "results", workdir / ".snakemake"):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def test_every_hostile_entry_is_one_failure_row_naming_it(hostile_run):
    workdir, _, _ = hostile_run
    failures = pq.read_table(workdir / "results" / "seed" / "00000" / "failures.parquet").to_pylist()
    documents = pq.read_table(workdir / "results" / "seed" / "00000" / "documents.parquet").to_pylist()
    assert len(documents) == 2
    named = sorted(f["message"].split(" ", 1)[0] for f in failures)
    assert named == sorted(HOSTILE)
    assert {f["reason"] for f in failures} == {"refused_entry"}


def test_the_echoed_key_is_in_no_file_the_run_wrote(hostile_run):
    workdir, _, result = hostile_run
    rows = pq.read_table(workdir / "results" / "text_qa" / "00000.parquet").to_pylist()
    echoed = [
        r for r in rows if r["status"] == "failed" and "Authorization: Bearer ***" in (r["failure_message"] or "")
    ]
    assert echoed, "the fake server's echo should have reached a failure row (redacted)"
    leaks = [str(p) for p in written_files(workdir) if KEY.encode() in p.read_bytes()]
    assert leaks == []
    assert KEY not in result.stdout + result.stderr


def test_nothing_from_outside_the_source_folder_was_written(hostile_run):
    workdir, _, _ = hostile_run
    passwd_head = Path("/etc/passwd").read_bytes()[:12]
    for path in written_files(workdir):
        data = path.read_bytes()
        assert OUTSIDE_MARKER not in data and passwd_head not in data, path


def test_a_results_folder_inside_the_source_folder_is_a_config_error(hostile_run, tmp_path):
    workdir, _, _ = hostile_run
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    source = Path(config["source"]["settings"]["local"]["path"])
    config["results_dir"] = str(source / "results")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, "-n", env={**os.environ, "HOSTILE_KEY": KEY})
    output = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "results_dir" in output and "inside source.settings.local.path" in output
    assert not (source / "results").exists()


def test_the_seed_job_stays_under_its_memory_limit(hostile_run):
    _, peak_mb, _ = hostile_run
    workers = 2  # the seed rule's threads (--cores 2): its worker processes
    # Generous: the seed process and each worker at the largest peak of any process of the run.
    assert 0 < (1 + workers) * peak_mb < seed_job_memory_limit_mb(), peak_mb
