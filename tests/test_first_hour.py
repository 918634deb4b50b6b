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

from conftest import SAMPLE_PDF_DIR, copy_pdfs
from helpers.workflow import snakemake_cmd
from longdoc_sdg.registry import qa_stages
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

QA_STAGES = qa_stages()

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
    # One line per seed and stage job; the last job to finish counts every tracked job of the run.
    assert len(lines) == sum(plan.values())
    # (jobs finishing together may print in either order: one of them counts every job)
    assert any(f"run {len(lines)}/{len(lines)} tracked jobs" in line for line in lines)
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
        # One model stage, nothing else: the fewest jobs that reach the closing summary.
        "stages": {"ocr": {"enabled": False}, "single_page_qa": {"model": "fake", "settings": {"num_records": 3}}},
        "export": {"enabled": False},
        "report": {"enabled": False},
        **extra,
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str):
    return subprocess.run(
        snakemake_cmd(workdir, *args, configfile=configfile),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_a_server_failing_every_row_makes_the_summary_warn_and_fail_when_configured(tmp_path):
    # Every chat request answers 400 (a content fault: no retries), so single_page_qa has 0 ok rows.
    with spawn_fake_server("--fault", "400=1.0") as (_, base_url):
        failing = small_run(tmp_path, base_url, summary={"run": {"fail_below_floor": True}})
        result = snakemake(tmp_path, failing)
        assert result.returncode == 1, result.stderr[-4000:]
        assert "WARNING: 1 stage(s) below the yield floor of 1 ok row(s)" in result.stderr
        assert "single_page_qa: 0 ok of 3; failures: bad_request" in result.stderr
        assert "failing the run: single_page_qa below summary.run.min_ok_rows=1" in result.stderr
        summary = json.loads((tmp_path / "results" / "summary.json").read_text())
        row = next(s for s in summary["stages"] if s["stage"] == "single_page_qa")
        assert (row["rows"], row["ok"], row["failed"]) == (3, 0, 3)
        assert row["top_failure_reasons"] == [["bad_request", 3]]

        # The floor is a run setting: with fail_below_floor off, the same summary only warns.
        warning_only = small_run(tmp_path, base_url)
        result = snakemake(tmp_path, warning_only, "--forcerun", "summary")
        assert result.returncode == 0, result.stderr[-4000:]
        assert "WARNING: 1 stage(s) below the yield floor" in result.stderr
        assert "set summary.run.fail_below_floor: true to make such a run fail" in result.stderr
        assert "next: read results/logs/single_page_qa/*.log" in result.stderr


def test_summary_counts_tokens_gpu_hours_and_names_the_next_command():
    from longdoc_sdg.report.summary import below_floor, build_summary, render_text

    stats = {
        "generated": "2026-01-01T00:00:00+00:00",
        "totals": {
            "documents_listed": 2,
            "documents_seeded": 2,
            "documents_failed": 0,
            "pages": 9,
            "exported": {"single_page_qa": 3},
        },
        "tables": {
            "stage_yield": [
                {
                    "stage": "seed",
                    "unit": "documents",
                    "rows": 2,
                    "ok": 2,
                    "failed": 0,
                    "exported": None,
                    "train": None,
                    "validation": None,
                },
                {
                    "stage": "single_page_qa",
                    "unit": "rows",
                    "rows": 6,
                    "ok": 4,
                    "failed": 2,
                    "exported": 3,
                    "train": 2,
                    "validation": 1,
                },
            ],
            "failure_reasons": [{"stage": "single_page_qa", "reason": "length", "rows": 2}],
            "tokens": [
                {
                    "stage": "single_page_qa",
                    "model": "m",
                    "rows": 6,
                    "prompt_tokens": 600,
                    "completion_tokens": 120,
                    "reasoning_tokens": 20,
                }
            ],
        },
    }
    plan = {
        "results": "results",
        "skipped": [],
        "served": {"qwen3-vl-30b": 2},
        "report": True,
        "export": {"datasets": "results/export/datasets/"},
    }
    ledger = {"deployments": {"qwen3-vl-30b": {"gpu_seconds": 7200.0}}}
    summary = build_summary(stats, plan, ledger)
    assert summary["tokens"] == {"prompt_tokens": 600, "completion_tokens": 120, "reasoning_tokens": 20}
    assert summary["gpu_hours"] == {"qwen3-vl-30b": 2.0}
    assert summary["stages"][1]["top_failure_reasons"] == [["length", 2]]
    text = render_text(summary)
    assert "served deployments: qwen3-vl-30b 2 GPU(s), 2 GPU-hours" in text
    assert "QA pairs exported: single_page_qa 3" in text
    assert "next: snakemake --profile profiles/local --report report.html" in text
    assert below_floor(summary, 5) == [summary["stages"][0], summary["stages"][1]]
    assert "WARNING: 2 stage(s) below the yield floor of 5 ok row(s)" in render_text(summary, 5)
