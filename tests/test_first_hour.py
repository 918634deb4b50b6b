"""A new user's first hour: the demo command end to end (every stage, the judge, export, report,
against the FAKE OpenAI-compatible server, a test double), the closing summary with its yield
floor, and outputs that follow the umask."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, SAMPLE_PDF_DIR, copy_pdfs
from longdoc_sdg.plan import QA_STAGES
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

pytestmark = pytest.mark.workflow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_umask(mask: int):
    return lambda: os.umask(mask)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run (umask 022) shared by the checks below."""
    workdir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "longdoc_sdg.cli",
            "demo",
            "--directory",
            str(workdir),
            "--port",
            str(free_port()),
            "--cores",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=workdir,
        preexec_fn=with_umask(0o022),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return workdir, workdir / "results-demo", result


def test_demo_exports_qa_rows_of_every_stage_and_labels_them(demo):
    _, results, result = demo
    summary = json.loads((results / "summary.json").read_text())
    assert summary["demo"] is True
    exported = summary["exported"]
    assert set(exported) == set(QA_STAGES)
    assert sum(exported.values()) > 0
    # Every stage and the judge of every QA stage made ok rows: the demo shows the whole product.
    assert all(stage["ok"] > 0 for stage in summary["stages"]), summary["stages"]
    for stage, kept in exported.items():
        assert pq.read_metadata(results / "export" / "datasets" / f"{stage}.parquet").num_rows == kept
    card = (results / "export" / "hub" / "README.md").read_text()
    assert "DEMO DATA" in card and "demo-data" in card
    # The closing summary reaches the console, labelled as demo data.
    assert "longdoc-sdg run summary  [DEMO DATA" in result.stderr
    assert "QA pairs exported:" in result.stderr


def test_demo_console_shows_whole_run_progress(demo):
    _, results, result = demo
    lines = [line for line in result.stderr.splitlines() if line.startswith("[progress] ")]
    plan = json.loads((results / "logs" / "progress" / "plan.json").read_text())["planned"]
    # One line per seed and stage job, the last one counting every tracked job of the run.
    assert len(lines) == sum(plan.values())
    assert f"run {len(lines)}/{len(lines)} tracked jobs" in lines[-1]
    assert any(line.startswith("[progress] seed 00000 done: seed 1/1 shard(s), 111 pages") for line in lines)
    assert all("ETA" in line and "/s per job" in line for line in lines)


def test_demo_report_has_sample_rows_with_page_images_and_the_demo_label(demo):
    _, results, _ = demo
    report = (results / "report.html").read_text()
    assert "DEMO DATA" in report
    samples = (results / "report" / "samples.html").read_text()
    assert "DEMO DATA" in samples
    sections = samples.split("<h3>")[1:]
    assert [section.split(" ", 1)[0] for section in sections] == list(QA_STAGES)
    for section in sections:  # every QA stage shows rows, each with its page images
        assert section.count("<div class='row'>") >= 1, section[:300]
        assert section.count("src='data:image/png;base64,") >= section.count("<div class='row'>")
    assert "samples.html" in report


def test_demo_outputs_follow_the_umask_and_secrets_stay_private(demo):
    workdir, results, _ = demo
    files = [p for p in results.rglob("*") if p.is_file()]
    private = [str(p.relative_to(workdir)) for p in files if not p.stat().st_mode & 0o044]
    assert files and private == []
    listed = subprocess.run(["find", str(results), "-type", "f", "-perm", "/044"], capture_output=True, text=True)
    assert len(listed.stdout.splitlines()) == len(files)


def small_run(workdir: Path, base_url: str, **extra) -> Path:
    copy_pdfs([SAMPLE_PDF_DIR / "MVT_Rnews.pdf"], workdir / "pdfs")
    endpoint = {"base_url": base_url, "model": "fake-model", "api_key_env": None}
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": "pdfs"}}},
        "seed": {"settings": {"dpi": 40}},
        "models": {"fake": {"endpoint": endpoint}},
        "stages": {"single_page_qa": {"model": "fake", "settings": {"num_records": 3}}},
        "export": {"enabled": False},
        **extra,
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str):
    return subprocess.run(
        [
            "snakemake",
            "--snakefile",
            str(REPO / "workflow" / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(configfile),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_a_server_failing_every_row_makes_the_summary_warn_and_fail_when_configured(tmp_path):
    # Every chat request answers 400 (a content fault: no retries), so single_page_qa has 0 ok rows.
    with spawn_fake_server("--fault", "400=1.0") as (_, base_url):
        failing = small_run(tmp_path, base_url, summary={"fail_below_floor": True})
        result = snakemake(tmp_path, failing)
        assert result.returncode == 1, result.stderr[-4000:]
        assert "WARNING: 1 stage(s) below the yield floor of 1 ok row(s)" in result.stderr
        assert "single_page_qa: 0 ok of 3; failures: bad_request" in result.stderr
        assert "failing the run: single_page_qa below summary.min_ok_rows=1" in result.stderr
        summary = json.loads((tmp_path / "results" / "summary.json").read_text())
        row = next(s for s in summary["stages"] if s["stage"] == "single_page_qa")
        assert (row["rows"], row["ok"], row["failed"]) == (3, 0, 3)
        assert row["top_failure_reasons"] == [["bad_request", 3]]

        # The floor is a run setting: with fail_below_floor off, the same summary only warns.
        warning_only = small_run(tmp_path, base_url)
        result = snakemake(tmp_path, warning_only, "--forcerun", "summary")
        assert result.returncode == 0, result.stderr[-4000:]
        assert "WARNING: 1 stage(s) below the yield floor" in result.stderr
        assert "set summary.fail_below_floor: true to make such a run fail" in result.stderr
        assert "next: read results/logs/single_page_qa/*.log" in result.stderr
