"""`snakemake evaluate`: the evaluation as a workflow target, against a scripted double of the
OpenAI server (tests/test_evaluate.py's; the real-vLLM run of the same code is in
test_vllm_real.py). The target shares `longdoc-sdg evaluate`'s code, so the scores are the ones
worked out by hand there; here: the results re-score identically with `longdoc-sdg score`, a
missing PDF is a failure row, result-changing settings rerun it and run settings do not, bad
input fails before anything runs naming the row and field, and a served deployment's
--limit-mm-per-prompt caps the pages shown."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, SAMPLE_PDF_DIR
from helpers.evaluate import SAMPLES, ScriptedModel
from helpers.workflow import planned_jobs, snakemake_cmd, two_at_a_time
from longdoc_sdg.cli import main as cli_main
from longdoc_sdg.registry import model_stages

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(workdir, "evaluate", *args, configfile=path)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def base_config(samples: Path, model: dict, **settings) -> dict:
    return {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(SAMPLE_PDF_DIR)}}},
        "seed": {"settings": {"dpi": 30}},
        "models": {"bench-model": model},
        "evaluate": {
            "model": "bench-model",
            "settings": {"samples": str(samples), "documents": str(SAMPLE_PDF_DIR), **settings},
        },
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("wf_evaluate")
    samples = json.loads(SAMPLES.read_text())
    missing = dict(samples[0], doc_id="absent.pdf", question="What does the absent document say?")
    path = workdir / "samples.json"
    path.write_text(json.dumps(samples + [missing]))
    server = ScriptedModel([s["question"] for s in samples])
    server.start()
    model = {"endpoint": {"base_url": server.base_url, "model": "fake-model", "api_key_env": None}}
    config = base_config(path, model, max_images=2)
    try:
        result = snakemake(workdir, config=config)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        yield workdir, config, server
    finally:
        server.stop()


def test_results_rescore_identically_and_the_missing_pdf_is_a_failure_row(evaluated, capsys):
    workdir, _, _ = evaluated
    out = workdir / "results" / "evaluate"
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["samples"], scores["answered"], scores["failed"]) == (11, 10, 1)
    for mode in ("official", "fixed"):
        assert cli_main(["score", str(out / "results.json"), "--mode", mode]) == 0
        assert json.loads(capsys.readouterr().out) == scores[mode]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["doc_id"], f["reason"]) for f in failures] == [("absent.pdf", "missing_document")]
    assert (workdir / "results" / "logs" / "evaluate" / "evaluate.log").stat().st_size > 0
    shown = pq.read_table(out / "answers.parquet", columns=["status", "shown_pages"]).to_pylist()
    assert {r["shown_pages"] for r in shown if r["status"] == "ok"} == {2}


def test_run_settings_rerun_nothing_and_result_settings_rerun_it(evaluated, tmp_path):
    workdir, config, _ = evaluated

    def dry_run(name, change):
        changed = json.loads(json.dumps(config))
        change(changed)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(changed))
        return lambda: subprocess.run(
            snakemake_cmd(workdir, "evaluate", "-n", configfile=path), capture_output=True, text=True, timeout=600
        )

    changes = {
        "steering": lambda c: c["evaluate"].update(run={"concurrency": {"max": 3}, "request_timeout_s": 99}),
        "max_images": lambda c: c["evaluate"]["settings"].update(max_images=1),
        "dpi": lambda c: c["seed"]["settings"].update(dpi=40),
        "model": lambda c: c["models"]["bench-model"]["endpoint"].update(model="another-model"),
    }
    results = two_at_a_time({name: dry_run(name, change) for name, change in changes.items()})
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    steering = results.pop("steering")
    assert "Nothing to be done" in steering.stdout + steering.stderr
    for name, result in results.items():
        assert planned_jobs(result.stdout) == {"evaluate": 1}, name


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[1].pop("answer_format"), "row 2 (doc_id 'MVT_Rnews.pdf'): missing field answer_format"),
        (
            lambda rows: rows[1].update(answer_format="Bool"),
            "row 2 (doc_id 'MVT_Rnews.pdf'): field answer_format is 'Bool'",
        ),
    ],
)
def test_bad_samples_fail_before_anything_runs(tmp_path, edit, message):
    rows = json.loads(SAMPLES.read_text())
    edit(rows)
    (tmp_path / "samples.json").write_text(json.dumps(rows))
    model = {"endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None}}
    result = snakemake(tmp_path, "-n", config=base_config(tmp_path / "samples.json", model))
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert not (tmp_path / "results" / "evaluate").exists()


def test_unset_samples_names_the_key(tmp_path):
    model = {"endpoint": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None}}
    config = base_config(tmp_path / "x.json", model)
    del config["evaluate"]["settings"]["samples"]
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0 and "needs evaluate.settings.samples" in result.stdout + result.stderr


def test_served_deployment_caps_the_pages_at_its_image_limit(tmp_path):
    """The test-double deployment served by the serve machinery, its --limit-mm-per-prompt at
    one image: every question is shown one page; asking for more is refused at plan time."""
    model = {"deployment": "fake-vllm"}
    config = base_config(SAMPLES, model)
    # Only evaluate's model is served: the stages' deployments are not in the test folder.
    config["stages"] = {stage: {"enabled": False} for stage in model_stages()}
    config["serving"] = {
        "enabled": True,
        "run": {
            "launcher": "local",
            "deployments_dir": str(REPO / "tests" / "deployments"),
            "overrides": {"fake-vllm": {"extra_args": ["--limit-mm-per-prompt", '{"image": 1}']}},
        },
    }
    too_many = json.loads(json.dumps(config))
    too_many["evaluate"]["settings"]["max_images"] = 3
    refused = snakemake(tmp_path, "-n", config=too_many)
    assert refused.returncode != 0
    assert "evaluate.settings.max_images is 3, but the deployment accepts at most 1" in refused.stdout + refused.stderr

    result = snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    out = tmp_path / "results" / "evaluate"
    rows = pq.read_table(out / "answers.parquet").to_pylist()
    assert len(rows) == len(json.loads(SAMPLES.read_text())) and {r["status"] for r in rows} == {"ok"}
    assert {r["shown_pages"] for r in rows} == {1} and {r["model"] for r in rows} == {"fake-vllm-model"}
    assert "stopped servers: fake-vllm" in result.stdout + result.stderr
