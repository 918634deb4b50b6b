"""Reprocessing failed rows: `longdoc-sdg requeue` turns a finished shard
back into its resume journal minus the selected failures; `snakemake --forcerun SHARD` then
requests only those rows. Unit tests on ShardWriter outputs, then the whole loop through
Snakemake against the FAKE OpenAI-compatible server (a test double)."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.reliability import (
    ENV,
    KEY_ENV,
    LARGER,
    assert_no_key_leak,
    classify_settings,
    make_workdir,
    ok,
    rows_by_id,
    server_post,
    server_stats,
    snakemake,
)
from helpers.workflow import planned_jobs
from longdoc_sdg.cli import main as cli_main
from longdoc_sdg.reprocess import RequeueError, requeue_shard, shard_paths
from longdoc_sdg.rowstore import ShardWriter, shard_provenance
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

# Float, bool and list columns: kept rows must come back from the journal with the same values.
STAGE = pa.schema(
    [("answer", pa.string()), ("score", pa.float64()), ("flag", pa.bool_()), ("tags", pa.list_(pa.string()))]
)
FAILURES = {3: "length", 5: "schema_invalid", 7: "reasoning_only", 8: "length"}


def row(i: int, reason: str | None = None) -> dict:
    base = {
        "row_id": f"r{i:03d}",
        "doc_id": f"d{i % 2}",
        "pages": [i + 1],
        "model": "m",
        "prompt_tokens": 10 + i,
        "completion_tokens": 3,
        "reasoning_tokens": 0,
        "image_count": 1,
        "image_pixels": 1000 + i,
        "image_scale": 1.0,
        "est_prompt_tokens": 20 + i,
    }
    if reason:
        return {**base, "status": "failed", "failure_reason": reason, "failure_message": f"{reason} at {i}"}
    return {**base, "status": "ok", "answer": f"a{i} ü", "score": i / 3, "flag": i % 2 == 0, "tags": ["x", str(i)]}


def finished_shard(tmp_path: Path, config_hash: str = "h1") -> tuple[Path, Path, list[str]]:
    out = tmp_path / "results" / "text_qa" / "00000.parquet"
    journal = tmp_path / "results" / ".journal" / "text_qa" / "00000.jsonl"
    ids = [f"r{i:03d}" for i in range(10)]
    writer = ShardWriter(out, journal, config_hash, STAGE)
    for i in range(10):
        writer.write(row(i, FAILURES.get(i)))
    writer.finalize(ids)
    return out, journal, ids


def test_finalized_shard_records_its_journal_header_and_place(tmp_path):
    out, journal, _ = finished_shard(tmp_path)
    provenance = shard_provenance(out)
    assert provenance["journal_path"] == journal
    assert provenance["header"]["config_hash"] == "h1"


def test_requeue_keeps_good_rows_and_resume_requests_only_the_failed(tmp_path):
    out, journal, ids = finished_shard(tmp_path)
    before = pq.read_table(out).to_pylist()
    result = requeue_shard(out)
    assert result.changed and result.rows == 10 and result.kept == 6
    assert result.requeued == {"length": 2, "schema_invalid": 1, "reasoning_only": 1}
    assert not out.exists() and journal.exists()

    resumed = ShardWriter(out, journal, "h1", STAGE)  # what the forced job does
    assert resumed.done_ids() == {r for i, r in enumerate(ids) if i not in FAILURES}
    for i in FAILURES:
        resumed.write(row(i))
    resumed.finalize(ids)
    after = pq.read_table(out).to_pylist()
    for old, new in zip(before, after):
        if old["status"] == "ok":
            assert new == old  # the same values, floats and lists included
        else:
            assert new == {**row(int(old["row_id"][1:])), "failure_reason": None, "failure_message": None}
    assert [r["row_id"] for r in after] == ids
    assert shard_provenance(out)["header"]["config_hash"] == "h1"


def test_requeue_by_reason_keeps_other_failures_as_they_were(tmp_path):
    out, journal, ids = finished_shard(tmp_path)
    before = rows_by_id(out)
    result = requeue_shard(out, reasons={"length"})
    assert result.requeued == {"length": 2} and result.kept_failures == {"schema_invalid": 1, "reasoning_only": 1}
    resumed = ShardWriter(out, journal, "h1", STAGE)
    assert set(ids) - resumed.done_ids() == {"r003", "r008"}
    for i in (3, 8):
        resumed.write(row(i))
    resumed.finalize(ids)
    after = rows_by_id(out)
    assert after["r005"] == before["r005"] and after["r005"]["failure_reason"] == "schema_invalid"
    assert after["r003"]["status"] == after["r008"]["status"] == "ok"


def test_nothing_selected_or_dry_run_changes_nothing(tmp_path):
    out, journal, _ = finished_shard(tmp_path)
    mtime = out.stat().st_mtime_ns
    assert requeue_shard(out, reasons={"timeout"}).requeued == {}
    dry = requeue_shard(out, dry_run=True)
    assert sum(dry.requeued.values()) == 4 and not dry.changed
    assert out.stat().st_mtime_ns == mtime and not journal.exists()


def test_a_changed_config_never_reuses_requeued_rows(tmp_path):
    out, journal, _ = finished_shard(tmp_path)
    requeue_shard(out)
    assert ShardWriter(out, journal, "another-config", STAGE).done_ids() == set()


def test_shards_without_provenance_and_missing_shards_are_refused(tmp_path):
    plain = tmp_path / "results" / "classify" / "00000.parquet"
    plain.parent.mkdir(parents=True)
    pq.write_table(pa.table({"row_id": ["a"], "status": ["failed"], "failure_reason": ["length"]}), plain)
    with pytest.raises(RequeueError, match="no journal provenance.*--forcerun"):
        requeue_shard(plain)
    with pytest.raises(RequeueError, match="no such shard"):
        requeue_shard(tmp_path / "results" / "classify" / "00001.parquet")


def test_stage_targets_name_every_shard(tmp_path):
    results = tmp_path / "results"
    for rel in (
        "classify/00000.parquet",
        "classify/00001.parquet",
        "classify/notes.parquet",
        "judge/text_qa/00000.parquet",
        "judge/visual_qa/00002.parquet",
    ):
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_bytes(b"")
    classify = results / "classify"
    assert shard_paths(["classify"], results) == [classify / "00000.parquet", classify / "00001.parquet"]
    assert shard_paths(["judge/text_qa"], results) == [results / "judge/text_qa/00000.parquet"]
    assert len(shard_paths(["judge", "judge/text_qa"], results)) == 2
    assert shard_paths(["x/00007.parquet"], results) == [Path("x/00007.parquet")]
    with pytest.raises(RequeueError, match="neither a shard parquet nor a stage"):
        shard_paths(["seed"], results)
    with pytest.raises(RequeueError, match="no finished shards"):
        shard_paths(["visual_qa"], results)


def test_cli_prints_the_forcerun_command(tmp_path, capsys, monkeypatch):
    out, _, _ = finished_shard(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["requeue", "text_qa", "--reasons", "length", "--dry-run"]) == 0
    assert "would requeue 2 rows in 1 shard(s)" in capsys.readouterr().out
    assert cli_main(["requeue", "text_qa", "--reasons", "length,schema_invalid"]) == 0
    printed = capsys.readouterr().out
    assert "requeued 3 rows" in printed and "snakemake --forcerun results/text_qa/00000.parquet" in printed
    # a second requeue finds no finished shard: the first one's journal waits for the rerun
    assert cli_main(["requeue", "results/text_qa/00000.parquet"]) == 2
    assert "no such shard" in capsys.readouterr().err


# ------------------------------------------------------------------------ through Snakemake


def test_requeue_then_forcerun_requests_only_the_requeued_rows(tmp_path):
    """First run with content faults on a share of classify requests; requeue shard 00000's
    length and schema_invalid failures; rerun with faults off as documented: only those rows are
    requested, every other row of both shards keeps its values, downstream visual_qa reruns."""
    faults = ["--fault", "length=0.2", "--fault", "schema_invalid=0.15", "--fault", "reasoning_only=0.15"]
    with (
        spawn_fake_server("--api-key-env", KEY_ENV, *faults, env=ENV) as (_, faulty),
        spawn_fake_server("--api-key-env", KEY_ENV, env=ENV) as (_, clean),
    ):
        visual = classify_settings("clean")
        workdir = make_workdir(
            tmp_path / "wf",
            LARGER,
            {
                "classify": classify_settings("faulty"),
                "visual_qa": {**visual, "settings": {"num_records": 3}},
            },
            {"faulty": faulty, "clean": clean},
            documents_per_shard=2,
        )
        ok(snakemake(workdir))
        results = workdir / "results"
        shard0, shard1 = results / "classify" / "00000.parquet", results / "classify" / "00001.parquet"
        before = rows_by_id(shard0)
        reasons = collections.Counter(r["failure_reason"] for r in before.values() if r["status"] == "failed")
        assert reasons["length"] and reasons["schema_invalid"] and reasons["reasoning_only"], reasons
        untouched = {p: p.stat().st_mtime_ns for p in (shard1, results / "visual_qa" / "00001.parquet")}
        visual0 = (results / "visual_qa" / "00000.parquet").stat().st_mtime_ns

        requeue = subprocess.run(
            ["longdoc-sdg", "requeue", "results/classify/00000.parquet", "--reasons", "length,schema_invalid"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert requeue.returncode == 0, requeue.stderr
        assert "  snakemake --forcerun results/classify/00000.parquet\n" in requeue.stdout
        requeued = reasons["length"] + reasons["schema_invalid"]
        assert not shard0.exists()

        server_post(faulty, "/_config", {"faults": {}})  # the cause is fixed
        server_post(faulty, "/_reset")
        rerun = ok(snakemake(workdir, "--forcerun", "results/classify/00000.parquet"))
        jobs = planned_jobs(rerun.stdout + rerun.stderr)
        assert jobs["classify"] == 1 and jobs["visual_qa"] == 1  # the shard and its dependents only
        stats = server_stats(faulty)
    assert stats["requests"] == stats["distinct_requests"] == requeued

    after = rows_by_id(shard0)
    assert list(after) == list(before)
    for row_id, old in before.items():
        if old["status"] == "failed" and old["failure_reason"] in ("length", "schema_invalid"):
            assert after[row_id]["status"] == "ok" and after[row_id]["page_classification"]
        else:
            assert after[row_id] == old  # good rows and unselected failures keep their values
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert (results / "visual_qa" / "00000.parquet").stat().st_mtime_ns != visual0
    assert not (results / ".journal" / "classify" / "00000.jsonl").exists()
    assert "Nothing to be done" in ok(snakemake(workdir, "-n")).stdout
    assert_no_key_leak(workdir)
