"""Stages 02-09 end to end through Snakemake against the FAKE OpenAI-compatible server (a test
double; the real-vLLM run is in test_workflow_vllm.py), on the shared finished run of
tests/helpers/fake_run.py. Checks the plan and row accounting for every stage and shard, what a
config change reruns (the dry runs of the rerun table), that the judge redoes only a changed QA
stage, the verify filter, and that the API key never leaks."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from helpers.fake_run import FAKE_KEY, MIN_JUDGE_SCORE, SHARDS, VERIFIED
from helpers.workflow import planned_jobs, two_at_a_time
from longdoc_sdg.registry import get_spec, model_stages, qa_stages

QA_STAGES = qa_stages()
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
    "publish",
}


def stage_jobs(output: str) -> dict[str, int]:
    """Planned per-shard jobs, without the run-wide export/report aggregates."""
    return {rule: n for rule, n in planned_jobs(output).items() if rule not in AGGREGATE_RULES}


pytestmark = pytest.mark.workflow

PROMPTS = REPO / "workflow" / "scripts" / "longdoc_sdg" / "prompts"


def edited_prompt(folder, stage: str, edit: str):
    path = folder / f"{stage}.j2"
    path.write_text((PROMPTS / f"{stage}.j2").read_text() + f"\n{{# {edit} #}}\n")
    return str(path)


def change_prompt(folder):
    def change(config):
        config["stages"]["windowed_qa"]["settings"]["prompt_template"] = edited_prompt(folder, "windowed_qa", "an edit")

    return change


def change_model(config):
    endpoint = {**config["models"]["fake"]["endpoint"], "model": "another-model"}
    config["models"]["another"] = {"endpoint": endpoint}
    config["stages"]["classify"]["model"] = "another"


def move_endpoint(config):
    """The same model through another alias, host spelling and key variable."""
    endpoint = config["models"]["fake"]["endpoint"]
    moved = endpoint["base_url"].replace("127.0.0.1", "localhost")
    assert moved != endpoint["base_url"]
    config["models"]["moved"] = {"endpoint": {**endpoint, "base_url": moved, "api_key_env": "OTHER_KEY"}}
    for stage in config["stages"].values():
        if stage.get("model") == "fake":
            stage["model"] = "moved"


def change_run_settings(config):
    """Every stage's `run:` and the seed's (downloads, worker limits, page cap, PNG level)."""
    for stage in config["stages"].values():
        stage["run"] = {
            "concurrency": {"max": 3},
            "retry": {"max_attempts": 2},
            "error_budget": {"max_error_rate": 0.9},
            "request_timeout_s": 30,
            "image_transport": {"mode": "file"},
        }
    config["seed"]["run"] = {
        "download": {"concurrency": 1, "timeout_s": 3, "deadline_s": 60},
        "worker": {"memory_mb": 1024, "cpu_seconds_per_page": 9, "chunk_pages": 4},
        "max_document_pages": 500,
        "png_compression_level": 6,
    }


@pytest.fixture(scope="module")
def plans(fake_run, tmp_path_factory):
    """The rerun table: `snakemake -n` on the finished run for each config change."""
    folder = tmp_path_factory.mktemp("rerun_table")
    changes = {
        "unchanged": None,
        "prompt": change_prompt(folder),
        "model": change_model,
        "window": lambda c: c["stages"]["windowed_qa"]["settings"].update(window_size=3),
        "dpi": lambda c: c["seed"]["settings"].update(dpi=60),
        "endpoint": move_endpoint,
        "run_settings": change_run_settings,
    }
    env = {**fake_run.env, "OTHER_KEY": FAKE_KEY}

    def dry_run(name, change):
        configfile = fake_run.changed_config(change, folder / f"{name}.yaml") if change else None
        return lambda: fake_run.snakemake("-n", configfile=configfile, env=env)

    results = two_at_a_time({name: dry_run(name, change) for name, change in changes.items()})
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    return {name: result.stdout + result.stderr for name, result in results.items()}


def test_the_plan_has_a_job_per_shard_and_a_judge_job_per_qa_stage_and_shard(fake_run):
    jobs = fake_run.planned
    assert jobs["seed"] == len(SHARDS) and all(jobs[s] == len(SHARDS) for s in MODEL_STAGES)
    assert jobs["judge"] == len(SHARDS) * len(QA_STAGES)
    assert jobs["verify"] == len(SHARDS) * len(VERIFIED)


def test_every_stage_writes_one_parquet_per_shard_with_full_accounting(fake_run):
    results = fake_run.results
    for shard in SHARDS:
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
    for path in fake_run.results.rglob("*.parquet"):
        if {"seed", "manifest", "report", "export"} & set(path.parts):
            continue
        for row in pq.read_table(path, columns=["status", "failure_reason"]).to_pylist():
            if row["status"] == "failed":
                assert row["failure_reason"], f"{path}: a failed row without a reason"


def test_nothing_to_do_after_a_complete_run(plans):
    assert "Nothing to be done" in plans["unchanged"]


def test_prompt_change_reruns_only_that_stage_and_its_judge(plans):
    assert stage_jobs(plans["prompt"]) == {"judge": 2, "windowed_qa": 2}


def test_model_change_reruns_that_stage_and_dependents(plans):
    assert stage_jobs(plans["model"]) == {"classify": 2, "visual_qa": 2, "judge": 2, "verify": 2}


def test_window_size_change_reruns_only_windowed_qa_and_what_reads_it(plans):
    jobs = planned_jobs(plans["window"])
    assert stage_jobs(plans["window"]) == {"windowed_qa": 2, "judge": 2}
    assert jobs["export_dataset"] == jobs["export_reference"] == 1  # windowed_qa's only


def test_dpi_change_reruns_from_the_seed(plans):
    jobs = planned_jobs(plans["dpi"])
    assert jobs["seed"] == 2 and all(jobs[s] == 2 for s in MODEL_STAGES)
    assert jobs["judge"] == 2 * len(QA_STAGES) and jobs["verify"] == 2 * len(VERIFIED)
    # the listing and the documents' fingerprints do not depend on the rendering
    assert not {"manifest", "fingerprint", "screen_sources"} & set(jobs), jobs
    assert "Params have changed" in plans["dpi"] or "params changed" in plans["dpi"].lower()


def test_endpoint_host_alias_and_key_variable_rerun_nothing(plans):
    """Only the model's identity (its name) is a rerun trigger: the same model reached through
    another alias, host spelling or key variable reruns nothing."""
    assert "Nothing to be done" in plans["endpoint"], plans["endpoint"][-3000:]


def test_run_settings_of_every_stage_and_the_seed_rerun_nothing(plans):
    assert "Nothing to be done" in plans["run_settings"], plans["run_settings"][-3000:]


def test_the_key_never_leaks(fake_run):
    leaks = []
    for path in fake_run.dir.rglob("*"):
        if path.is_file() and FAKE_KEY.encode() in path.read_bytes():
            leaks.append(str(path.relative_to(fake_run.dir)))
    assert leaks == []


def test_judge_redoes_only_the_changed_qa_stage(fake_run, tmp_path):
    """After a windowed_qa prompt edit only windowed_qa's rows are asked and judged again; the
    other QA stages' judgements stay as they were. (On a copy of the shared run, asking for
    every judge output: what the export and report make of them is the other tests' business.)"""
    run = fake_run.copy(tmp_path / "run")
    results = run.results
    unchanged = [s for s in QA_STAGES if s != "windowed_qa"]
    before = {
        (s, shard): pq.read_table(results / "judge" / s / f"{shard}.parquet").to_pylist()
        for s in unchanged
        for shard in SHARDS
    }
    changed = run.changed_config(change_prompt(tmp_path), tmp_path / "changed.yaml")
    judge_outputs = [f"results/judge/{s}/{shard}.parquet" for s in QA_STAGES for shard in SHARDS]

    requests_before = run.server.requests
    result = run.snakemake(*judge_outputs, configfile=changed)
    assert result.returncode == 0, result.stderr[-4000:]
    new_requests = run.server.requests - requests_before

    assert stage_jobs(result.stdout + result.stderr) == {"windowed_qa": 2, "judge": 2}
    for (stage, shard), rows in before.items():
        assert pq.read_table(results / "judge" / stage / f"{shard}.parquet").to_pylist() == rows
    statuses = [
        r for s in SHARDS for r in pq.read_table(results / "windowed_qa" / f"{s}.parquet").column("status").to_pylist()
    ]
    windowed_rows, windowed_ok = len(statuses), statuses.count("ok")
    # Each windowed row is one generation request (plus retries of injected faults: none here)
    # and each ok windowed row one judge request; nothing for the other stages.
    assert new_requests == windowed_rows + windowed_ok, (new_requests, windowed_rows, windowed_ok)


def test_verify_scores_the_rows_and_the_export_drops_disagreements(fake_run):
    """Every eligible row of a verified stage gets a verdict; the export drops exactly the rows
    whose verdict falls under their format's threshold (counted here from the shards, through the
    filters that come first) and says so in its summary, its log and the run's closing summary."""
    import json

    from longdoc_sdg.config import ExportFilters

    results = fake_run.results
    thresholds = ExportFilters().min_verify_score
    agreeing, disagreeing = set(), set()
    expected_drops: dict[str, int] = {}
    for stage in VERIFIED:
        expected_drops[stage] = 0
        for shard in SHARDS:
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
                # the filters that come first: failed, judge verdict missing, judge score, format
                judged_ok = judge is not None and judge["status"] == "ok"
                if below and row["format_ok"] and judged_ok and judge["weighted_quality_score"] >= MIN_JUDGE_SCORE:
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
    line = next(li for li in fake_run.output.splitlines() if li.startswith("dropped by the export filters: "))
    for stage, drops in expected_drops.items():
        if drops:
            assert re.search(rf"\b{stage} [^;]*\bverify {drops}\b", line), line
