"""Stages 02-09 end to end through Snakemake against the FAKE OpenAI-compatible server (a test
double; the real-vLLM run is in test_workflow_vllm.py). Checks row accounting for every stage
and shard, reruns after a prompt or model change, and that the API key never leaks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, copy_pdfs
from helpers.workflow import planned_jobs, snakemake_cmd
from longdoc_sdg.registry import get_spec, model_stages, qa_stages
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

QA_STAGES = qa_stages()
# Verified in the shared run: the QA stages whose rows the test double writes in a form that
# passes their checks (the anchored stages' tagged replies fail there).
VERIFIED = ("text_qa", "visual_qa")
# Stages with one output per shard (judge and verify: one per QA stage and shard).
MODEL_STAGES = tuple(s for s in model_stages() if not get_spec(s).per_qa_stage)

AGGREGATE_RULES = {
    "all",
    "stats",
    "report_figures",
    "report_samples",
    "summary",
    "export_dataset",
    "export_reference",
    "export_hub",
}


def stage_jobs(output: str) -> dict[str, int]:
    """Planned per-shard jobs, without the run-wide export/report aggregates."""
    return {rule: n for rule, n in planned_jobs(output).items() if rule not in AGGREGATE_RULES}


pytestmark = pytest.mark.workflow

FAKE_KEY = "fake-key-7c1d0f8e2b9a4c36"


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, env=None, timeout=900):
    cmd = snakemake_cmd(workdir, *args, configfile=configfile)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def model_config(base_url: str) -> dict:
    return {"fake": {"endpoint": {"base_url": base_url, "model": "fake-model", "api_key_env": "FAKE_LLM_KEY"}}}


def stage_config() -> dict:
    stages = {stage: {"model": "fake", "settings": {"num_records": 6}} for stage in model_stages()}
    stages["ocr"] = {"settings": {"engine": "pdf-text"}}
    stages["windowed_qa"]["settings"]["num_records"] = 4
    stages["whole_document_qa"]["settings"]["num_records"] = 2
    stages["verify"].update(enabled=True)
    stages["verify"]["settings"]["verify_stages"] = list(VERIFIED)
    return stages


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, real_pdfs):
    workdir = tmp_path_factory.mktemp("wf_fake")
    pdf_dir = copy_pdfs(real_pdfs[:3], workdir / "pdfs")
    env = {**os.environ, "FAKE_LLM_KEY": FAKE_KEY}
    # --consistent-answers: the verify stage's re-answers agree with about half of the generated
    # answers (which ones is fixed by the questions), so the export's verify filter has work.
    fake_args = ("--api-key-env", "FAKE_LLM_KEY", "--reasoning", "--consistent-answers", "0.5")
    with spawn_fake_server(*fake_args, env=env) as (_, base_url):
        config = {
            "results_dir": "results",
            "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
            "sharding": {"settings": {"documents_per_shard": 2}},
            "seed": {"settings": {"dpi": 50}},
            "models": model_config(base_url),
            "stages": stage_config(),
            # The double's judge scores are noise: no judge threshold, so verified rows reach the
            # verify filter (which comes after the judge's in the export's order).
            "export": {"settings": {"filters": {"min_judge_score": None}}},
        }
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        assert snakemake(workdir, "results/manifest/index.json", env=env).returncode == 0
        dry = snakemake(workdir, "-n", env=env)
        assert dry.returncode == 0, dry.stderr
        jobs = planned_jobs(dry.stdout)
        assert jobs["seed"] == 2 and all(jobs[s] == 2 for s in MODEL_STAGES)
        assert jobs["judge"] == 2 * len(QA_STAGES)  # one job per (QA stage, shard)
        assert jobs["verify"] == 2 * len(VERIFIED)
        result = snakemake(workdir, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        (workdir / "run-output.txt").write_text(result.stdout + result.stderr)
        yield workdir, env, base_url


def test_every_stage_writes_one_parquet_per_shard_with_full_accounting(fake_run):
    workdir, _, _ = fake_run
    results = workdir / "results"
    for shard in ("00000", "00001"):
        pages = pq.read_table(results / "seed" / shard / "pages.parquet", columns=["doc_id"]).num_rows
        for stage in MODEL_STAGES:
            table = pq.read_table(results / stage / f"{shard}.parquet")
            ids = table.column("row_id").to_pylist()
            assert len(ids) == len(set(ids)), f"{stage}/{shard} has duplicate row ids"
            assert set(table.column("status").to_pylist()) <= {"ok", "failed"}
            if stage == "ocr":
                assert table.num_rows == pages
        for qa_stage in QA_STAGES:
            qa = pq.read_table(results / qa_stage / f"{shard}.parquet")
            judged = pq.read_table(results / "judge" / qa_stage / f"{shard}.parquet")
            ok_qa = sum(1 for s in qa.column("status").to_pylist() if s == "ok")
            assert judged.num_rows == ok_qa, f"judge/{qa_stage}/{shard}: {judged.num_rows} rows for {ok_qa} ok QA rows"
            scores = [s for s in judged.column("weighted_quality_score").to_pylist() if s is not None]
            assert all(0 <= s <= 1 for s in scores)


def test_failed_rows_carry_a_reason(fake_run):
    workdir, _, _ = fake_run
    for path in (workdir / "results").rglob("*.parquet"):
        if {"seed", "manifest", "report", "export"} & set(path.parts):
            continue
        for row in pq.read_table(path, columns=["status", "failure_reason"]).to_pylist():
            if row["status"] == "failed":
                assert row["failure_reason"], f"{path}: a failed row without a reason"


def test_nothing_to_do_after_a_complete_run(fake_run):
    workdir, env, _ = fake_run
    result = snakemake(workdir, "-n", env=env)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_prompt_change_reruns_only_that_stage_and_its_judge(fake_run, tmp_path):
    workdir, env, base_url = fake_run
    prompts = REPO / "workflow" / "scripts" / "longdoc_sdg" / "prompts"
    edited = tmp_path / "windowed_qa.j2"
    edited.write_text((prompts / "windowed_qa.j2").read_text() + "\n{# an edit #}\n")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["stages"]["windowed_qa"]["settings"]["prompt_template"] = str(edited)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", configfile=changed, env=env)
    assert result.returncode == 0, result.stderr
    assert stage_jobs(result.stdout) == {"judge": 2, "windowed_qa": 2}


def changed_dry_run(fake_run, tmp_path, change, **more_env) -> subprocess.CompletedProcess:
    workdir, env, _ = fake_run
    env = {**env, **more_env}
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    change(config)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", configfile=changed, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_model_change_reruns_that_stage_and_dependents(fake_run, tmp_path):
    def change(config):
        endpoint = {**config["models"]["fake"]["endpoint"], "model": "another-model"}
        config["models"]["another"] = {"endpoint": endpoint}
        config["stages"]["classify"]["model"] = "another"

    result = changed_dry_run(fake_run, tmp_path, change)
    assert stage_jobs(result.stdout) == {"classify": 2, "visual_qa": 2, "judge": 2, "verify": 2}


def test_window_size_change_reruns_only_windowed_qa_and_what_reads_it(fake_run, tmp_path):
    result = changed_dry_run(fake_run, tmp_path, lambda c: c["stages"]["windowed_qa"]["settings"].update(window_size=3))
    jobs = planned_jobs(result.stdout)
    assert stage_jobs(result.stdout) == {"windowed_qa": 2, "judge": 2}
    assert jobs["export_dataset"] == jobs["export_reference"] == 1  # windowed_qa's only


def test_dpi_change_reruns_from_the_seed(fake_run, tmp_path):
    result = changed_dry_run(fake_run, tmp_path, lambda c: c["seed"]["settings"].update(dpi=60))
    jobs = planned_jobs(result.stdout)
    assert jobs["seed"] == 2 and all(jobs[s] == 2 for s in MODEL_STAGES)
    assert jobs["judge"] == 2 * len(QA_STAGES) and jobs["verify"] == 2 * len(VERIFIED)


def test_endpoint_host_alias_and_key_variable_rerun_nothing(fake_run, tmp_path):
    """Only the model's identity (its name) is a rerun trigger: the same model reached through
    another alias, host spelling or key variable reruns nothing."""

    def change(config):
        endpoint = config["models"]["fake"]["endpoint"]
        moved = endpoint["base_url"].replace("127.0.0.1", "localhost")
        assert moved != endpoint["base_url"]
        config["models"]["moved"] = {"endpoint": {**endpoint, "base_url": moved, "api_key_env": "OTHER_KEY"}}
        for stage in config["stages"].values():
            if stage.get("model") == "fake":
                stage["model"] = "moved"

    result = changed_dry_run(fake_run, tmp_path, change, OTHER_KEY=FAKE_KEY)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout


def test_run_settings_of_every_stage_rerun_nothing(fake_run, tmp_path):
    def change(config):
        for stage in config["stages"].values():
            stage["run"] = {
                "concurrency": {"max": 3},
                "retry": {"max_attempts": 2},
                "error_budget": {"max_error_rate": 0.9},
                "request_timeout_s": 30,
                "image_transport": {"mode": "file"},
            }
        config["seed"]["run"] = {"download": {"concurrency": 1, "timeout_s": 3}, "worker": {"memory_mb": 1024}}

    result = changed_dry_run(fake_run, tmp_path, change)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout


def test_the_key_never_leaks(fake_run):
    workdir, _, _ = fake_run
    leaks = []
    for path in workdir.rglob("*"):
        if path.is_file() and FAKE_KEY.encode() in path.read_bytes():
            leaks.append(str(path.relative_to(workdir)))
    assert leaks == []


def test_judge_redoes_only_the_changed_qa_stage(fake_run, tmp_path):
    """After a windowed_qa prompt edit only windowed_qa's rows are asked and judged again; the
    other QA stages' judgements stay as they were."""
    import json
    import urllib.request

    workdir, env, base_url = fake_run
    results = workdir / "results"
    unchanged = [s for s in QA_STAGES if s != "windowed_qa"]
    before = {
        (s, shard): pq.read_table(results / "judge" / s / f"{shard}.parquet").to_pylist()
        for s in unchanged
        for shard in ("00000", "00001")
    }
    prompts = REPO / "workflow" / "scripts" / "longdoc_sdg" / "prompts"
    edited = tmp_path / "windowed_qa.j2"
    edited.write_text((prompts / "windowed_qa.j2").read_text() + "\n{# another edit #}\n")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["stages"]["windowed_qa"]["settings"]["prompt_template"] = str(edited)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))

    stats_url = base_url.rsplit("/v1", 1)[0] + "/_stats"
    requests_before = json.load(urllib.request.urlopen(stats_url))
    result = snakemake(workdir, configfile=changed, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    requests_after = json.load(urllib.request.urlopen(stats_url))

    for (stage, shard), rows in before.items():
        assert pq.read_table(results / "judge" / stage / f"{shard}.parquet").to_pylist() == rows
    windowed_rows = sum(pq.read_table(results / "windowed_qa" / f"{s}.parquet").num_rows for s in ("00000", "00001"))
    windowed_ok = sum(
        r == "ok"
        for s in ("00000", "00001")
        for r in pq.read_table(results / "windowed_qa" / f"{s}.parquet").column("status").to_pylist()
    )
    new_requests = requests_after["requests"] - requests_before["requests"]
    # Each windowed row is one generation request (plus retries of injected faults: none here)
    # and each ok windowed row one judge request; nothing for the other stages.
    assert new_requests == windowed_rows + windowed_ok, (new_requests, windowed_rows, windowed_ok)


def test_verify_scores_the_rows_and_the_export_drops_disagreements(fake_run):
    """Every eligible row of a verified stage gets a verdict; the export drops exactly the rows
    whose verdict falls under their format's threshold (counted here from the shards, through the
    filters that come first) and says so in its summary, its log and the run's closing summary."""
    import json

    from longdoc_sdg.config import ExportFilters

    workdir, _, _ = fake_run
    results = workdir / "results"
    thresholds = ExportFilters().min_verify_score
    agreeing, disagreeing = set(), set()
    expected_drops: dict[str, int] = {}
    for stage in VERIFIED:
        expected_drops[stage] = 0
        for shard in ("00000", "00001"):
            qa = {r["row_id"]: r for r in pq.read_table(results / stage / f"{shard}.parquet").to_pylist()}
            judged = {
                r["qa_row_id"]: r for r in pq.read_table(results / "judge" / stage / f"{shard}.parquet").to_pylist()
            }
            verdicts = pq.read_table(results / "verify" / stage / f"{shard}.parquet").to_pylist()
            eligible = {i for i, r in qa.items() if r["status"] == "ok" and r["format_ok"] is not False}
            assert {v["qa_row_id"] for v in verdicts} == eligible, f"verify/{stage}/{shard} misses rows"
            for verdict in verdicts:
                assert verdict["status"] == "ok", verdict["failure_reason"]
                assert 0 <= verdict["verify_score"] <= 1 and verdict["verify_answer"]
                below = verdict["verify_score"] < thresholds[verdict["benchmark_format"]]
                (disagreeing if below else agreeing).add(verdict["qa_row_id"])
                row, judge = qa[verdict["qa_row_id"]], judged.get(verdict["qa_row_id"])
                # earlier filters: failed, judge verdict missing, format (no judge threshold here)
                if below and row["format_ok"] and judge is not None and judge["status"] == "ok":
                    expected_drops[stage] += 1
    assert agreeing and disagreeing, (len(agreeing), len(disagreeing))  # the double's answers are a mix
    assert sum(expected_drops.values()) > 0

    for stage, drops in expected_drops.items():
        summary = json.loads((results / "export" / "datasets" / f"{stage}.summary.json").read_text())
        assert summary["verified"] and summary["dropped"]["verify"] == drops
        kept = pq.read_table(results / "export" / "datasets" / f"{stage}.parquet").to_pylist()
        assert not disagreeing & {r["row_id"] for r in kept}
        if drops:
            log = (results / "logs" / "export_dataset" / f"{stage}.log").read_text()
            assert f"'verify': {drops}" in log
    closing = json.loads((results / "summary.json").read_text())
    filtered = {s["stage"]: s["filtered"].get("verify", 0) for s in closing["stages"] if s["stage"] in VERIFIED}
    assert filtered == expected_drops
    printed = (workdir / "run-output.txt").read_text()
    line = next(li for li in printed.splitlines() if li.startswith("dropped by the export filters: "))
    for stage, drops in expected_drops.items():
        if drops:
            assert re.search(rf"\b{stage} [^;]*\bverify {drops}\b", line), line
