"""Reliability through Snakemake against the FAKE OpenAI-compatible server (a test double,
spawned as its own process): a SIGKILLed client job resumes and redoes at most its in-flight
requests; a dead endpoint fails the job at once, naming it, and a rerun succeeds once it is back; a mix
of endpoint faults leaves every row exactly once with the injected reasons; no key leaks.

Each test runs the `classify` stage (one request per page, so server request counts map to rows)
on shipped sample PDFs in its own temporary workflow directory."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from helpers.reliability import (
    ENV,
    KEY_ENV,
    LARGER,
    RUN_TIMEOUT,
    SMALL,
    assert_no_key_leak,
    classify_settings,
    free_port,
    journal_rows,
    make_workdir,
    ok,
    page_count,
    rows_by_id,
    server_post,
    server_stats,
    snakemake,
    snakemake_cmd,
)
from longdoc_sdg.testing.fake_openai_server import spawn_fake_server

pytestmark = pytest.mark.workflow


def test_killed_job_resumes_and_redoes_at_most_the_requests_in_flight(tmp_path):
    """SIGKILL the whole run while classify is half-way through its shard; the rerun requests
    only the rows missing from the journal, and the shard equals a clean run's."""
    concurrency = 2
    with spawn_fake_server("--api-key-env", KEY_ENV, "--latency", "0.3", env=ENV) as (_, base_url):
        workdir = make_workdir(
            tmp_path / "wf",
            SMALL,
            {
                "classify": classify_settings(concurrency={"max": concurrency, "initial": concurrency}),
            },
            {"fake": base_url},
        )
        journal = workdir / "results" / ".journal" / "classify" / "00000.jsonl"
        hang_guard = time.monotonic() + RUN_TIMEOUT  # never a speed check: only ends a hung run
        # own session: killpg reaches snakemake and the job processes it started
        run = subprocess.Popen(
            snakemake_cmd(workdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
            start_new_session=True,
        )
        try:
            while len(journal_rows(journal)) < 5:
                assert run.poll() is None, "the run ended before the kill"
                assert time.monotonic() < hang_guard, "classify never got going"
                time.sleep(0.02)
            os.killpg(run.pid, signal.SIGKILL)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
        # every process of the group is gone: nothing writes the journal behind our back
        deadline = time.monotonic() + 10
        while True:
            try:
                os.killpg(run.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "processes of the killed run survived"
            time.sleep(0.05)

        total = page_count(workdir)
        survived = journal_rows(journal)
        assert 5 <= len(survived) < total, "the kill did not land inside the shard"
        assert not (workdir / "results" / "classify" / "00000.parquet").exists()
        before = server_stats(base_url)["requests"]
        # requests sent but never journaled were in flight when the process died
        assert before - len(survived) <= concurrency
        server_post(base_url, "/_reset")

        # a SIGKILLed Snakemake leaves its lock behind: the user's recovery is --unlock, then rerun
        ok(snakemake(workdir, "--unlock"))
        ok(snakemake(workdir, "--rerun-incomplete"))
        after = server_stats(base_url)
        assert after["requests"] == total - len(survived), "the rerun requested journaled rows again"
        assert before + after["requests"] - total <= concurrency  # redone = the in-flight ones
        output = workdir / "results" / "classify" / "00000.parquet"
        assert not journal.exists()  # finalized
        resumed = pq.read_table(output)
        # a clean run of the same job (no journal left): the same rows, values and config hash
        ok(snakemake(workdir, "--forcerun", "results/classify/00000.parquet"))
        assert server_stats(base_url)["requests"] == after["requests"] + total
    assert resumed.to_pylist() == pq.read_table(output).to_pylist()
    assert resumed.schema.metadata == pq.read_schema(output).metadata
    assert not journal.exists()
    assert "Nothing to be done" in ok(snakemake(workdir, "-n")).stdout
    assert_no_key_leak(workdir)


def test_endpoint_down_fails_fast_naming_it_then_succeeds_once_it_is_up(tmp_path):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    workdir = make_workdir(tmp_path / "wf", SMALL[:1], {"classify": classify_settings()}, {"fake": base_url})
    output = workdir / "results" / "classify" / "00000.parquet"
    down = snakemake(workdir)
    assert down.returncode != 0
    # the job log says which endpoint is down; Snakemake's own output points at that log
    log = (workdir / "results" / "logs" / "classify" / "00000.log").read_text()
    assert f"EndpointError: endpoint {base_url} (model 'fake-model') is unreachable" in log
    assert "results/logs/classify/00000.log (check log file(s) for error details)" in down.stderr
    assert down.stderr.count("Error in rule classify") == 3  # each try failed on its own
    # no output, not even a temporary file of one
    assert not output.parent.exists() or list(output.parent.iterdir()) == []

    with spawn_fake_server("--api-key-env", KEY_ENV, "--port", str(port), env=ENV) as (_, served):
        assert served == base_url
        ok(snakemake(workdir))
        stats = server_stats(base_url)
    rows = rows_by_id(output)
    assert len(rows) == page_count(workdir) == stats["requests"]
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert_no_key_leak(workdir)


# Every fault kind at least once (the schedule covers the first requests), then shares of all
# of them; transient kinds are retried away, content kinds become failure rows.
SCHEDULE = (
    "500,ok,502,ok,503,ok,reset,ok,timeout,ok,malformed_body,ok,"
    "400,ok,length,ok,reasoning_only,ok,invalid_json,ok,schema_invalid"
)
SHARES = {
    "500": 0.03,
    "502": 0.03,
    "503": 0.03,
    "reset": 0.03,
    "timeout": 0.02,
    "malformed_body": 0.03,
    "400": 0.03,
    "length": 0.04,
    "reasoning_only": 0.04,
    "invalid_json": 0.04,
    "schema_invalid": 0.04,
}
TRANSIENT = ("500", "502", "503", "reset", "timeout", "malformed_body")
# fake server fault kind -> the failure_reason the engine reports
CONTENT_REASON = {
    "400": "bad_request",
    "length": "length",
    "reasoning_only": "reasoning_only",
    "invalid_json": "invalid_json",
    "schema_invalid": "schema_invalid",
}


def test_fault_mix_leaves_every_row_exactly_once_with_the_injected_reasons(tmp_path):
    args = ["--api-key-env", KEY_ENV, "--schedule", SCHEDULE, "--hang", "3", "--seed", "5"]
    for kind, share in SHARES.items():
        args += ["--fault", f"{kind}={share}"]
    with spawn_fake_server(*args, env=ENV) as (_, base_url):
        workdir = make_workdir(
            tmp_path / "wf",
            LARGER,
            {
                # a short request timeout turns the stalled replies into client timeouts quickly;
                # 8 attempts make a row failing every one of them vanishingly unlikely
                "classify": classify_settings(request_timeout_s=1.0, concurrency={"max": 4}, retry={"max_attempts": 8}),
            },
            {"fake": base_url},
        )
        ok(snakemake(workdir))
        stats = server_stats(base_url)
    rows = pq.read_table(workdir / "results" / "classify" / "00000.parquet").to_pylist()
    pages = pq.read_table(
        workdir / "results" / "seed" / "00000" / "pages.parquet", columns=["doc_id", "page_number"]
    ).to_pylist()
    # every input row exactly once, as a result or a failure
    assert len(rows) == len(pages) == 33
    assert sorted((r["doc_id"], r["pages"]) for r in rows) == sorted((p["doc_id"], [p["page_number"]]) for p in pages)
    assert len({r["row_id"] for r in rows}) == len(rows)
    # every kind was injected; the transient ones were retried into successes
    for kind in TRANSIENT + tuple(CONTENT_REASON):
        assert stats["outcomes"].get(kind, 0) >= 1, f"fault {kind} was never injected: {stats['outcomes']}"
    # the failures are exactly the content faults, one row per faulty request
    reasons = collections.Counter(r["failure_reason"] for r in rows if r["status"] == "failed")
    expected = collections.Counter({CONTENT_REASON[k]: n for k, n in stats["content_faults"].items()})
    assert reasons == expected
    assert all(r["failure_message"] for r in rows if r["status"] == "failed")
    assert all(r["page_classification"] for r in rows if r["status"] == "ok")
    assert sum(expected.values()) < len(rows)
    assert_no_key_leak(workdir)
