"""run_rows + ShardWriter against the fake server: fault suites, fail-fast, resume, kill."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.engine_rows import KILL_ROWS, STAGE, make_engine, process, rows_with, run_kill_shard
from longdoc_sdg.engine import (
    BreakerConfig,
    ConcurrencyConfig,
    EndpointError,
    RecordError,
    RetryConfig,
    ShardWriter,
    run_rows,
)
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer, spawn_fake_server


def run_shard(tmp_path, base_url, rows, **engine_kw):
    out = tmp_path / "out.parquet"
    writer = ShardWriter(out, tmp_path / "journal.jsonl", "cfg", STAGE)

    async def go():
        async with make_engine(base_url, **engine_kw) as engine:
            summary = await run_rows(rows, process, writer, engine)
            return summary, engine

    summary, engine = asyncio.run(go())
    writer.finalize(summary.expected_ids)
    return pq.read_table(out), summary, engine


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rows_streamed_with_tokens(server, tmp_path):
    server.reset(reasoning=True)
    rows = rows_with([f"question {i}" for i in range(50)])
    table, summary, engine = run_shard(tmp_path, server.base_url, rows)
    assert table.column("row_id").to_pylist() == [r["row_id"] for r in rows]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert table.column("pages").to_pylist() == [r["pages"] for r in rows]
    assert table.column("model").to_pylist() == ["fake-model"] * 50
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
        assert pa.compute.sum(table[name]).as_py() == getattr(engine.usage, name) > 0
    assert summary.ok == 50 and summary.resumed == 0


def test_fault_suite_by_directive_exact_reasons(server, tmp_path):
    """Every row ends exactly once, as a result or as a failure with the reason its fault implies."""
    server.reset(hang_s=5)
    plan = {
        "ok": "ok",
        "500*2": "ok",
        "502*1": "ok",
        "503*3": "ok",
        "reset*2": "ok",
        "timeout*1": "ok",
        "malformed_body*1": "ok",
        "length": "length",
        "reasoning_only": "reasoning_only",
        "invalid_json": "invalid_json",
        "schema_invalid": "schema_invalid",
        "400": "bad_request",
        "503*99": "server_error",
    }
    kinds = list(plan) * 6
    rows = rows_with([f"row {i} [[fake:{kind}]]" if kind != "ok" else f"row {i}" for i, kind in enumerate(kinds)])
    table, summary, _ = run_shard(
        tmp_path, server.base_url, rows, timeout=0.5, breaker=BreakerConfig(max_error_rate=0.5)
    )
    assert table.num_rows == len(rows) and len(set(table.column("row_id").to_pylist())) == len(rows)
    for row, kind, status, reason in zip(rows, kinds, table["status"].to_pylist(), table["failure_reason"].to_pylist()):
        expected = plan[kind]
        if expected == "ok":
            assert status == "ok" and reason is None, (row, reason)
        else:
            assert status == "failed" and reason == expected, (row, reason)
    failed = table.filter(pa.compute.equal(table["status"], "failed"))
    assert failed["question"].null_count == failed.num_rows
    assert all(failed["failure_message"].to_pylist())


def test_fault_suite_by_share_matches_server_counts(server, tmp_path):
    server.reset(
        seed=11,
        hang_s=5,
        faults={
            "500": 0.05,
            "502": 0.03,
            "503": 0.03,
            "reset": 0.03,
            "timeout": 0.02,
            "malformed_body": 0.03,
            "length": 0.05,
            "reasoning_only": 0.05,
            "invalid_json": 0.05,
            "schema_invalid": 0.05,
            "400": 0.03,
        },
    )
    rows = rows_with([f"share row {i}" for i in range(300)])
    table, summary, _ = run_shard(tmp_path, server.base_url, rows, timeout=0.5)
    assert sorted(table.column("row_id").to_pylist()) == sorted(r["row_id"] for r in rows)
    reasons = pa.compute.value_counts(table["failure_reason"].drop_null()).to_pylist()
    reasons = {r["values"]: r["counts"] for r in reasons}
    content = server.stats()["content_faults"]
    assert reasons == {
        "length": content["length"],
        "reasoning_only": content["reasoning_only"],
        "invalid_json": content["invalid_json"],
        "schema_invalid": content["schema_invalid"],
        "bad_request": content["400"],
    }
    assert summary.ok == 300 - sum(reasons.values()) > 200
    assert server.stats()["repeated_requests"] > 0  # transient faults were retried


def test_error_storm_fails_fast_then_rerun_succeeds(server, tmp_path):
    server.reset(faults={"503": 1.0})
    rows = rows_with([f"storm {i}" for i in range(200)])
    retry = RetryConfig(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)
    with pytest.raises(EndpointError) as err:
        run_shard(tmp_path, server.base_url, rows, retry=retry)
    message = str(err.value)
    assert server.base_url in message and "failing the job" in message and "server_error" in message
    assert not (tmp_path / "out.parquet").exists()
    assert server.stats()["requests"] < 200 * 3  # stopped long before trying every row
    server.reset()
    table, summary, _ = run_shard(tmp_path, server.base_url, rows)
    assert table.num_rows == 200 and set(table["status"].to_pylist()) == {"ok"}


def test_small_shard_of_infrastructure_failures_fails(server, tmp_path):
    server.reset(faults={"503": 1.0})
    retry = RetryConfig(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02)
    with pytest.raises(EndpointError):
        run_shard(tmp_path, server.base_url, rows_with(["a", "b", "c"]), retry=retry)


def test_endpoint_down_fails_in_seconds_and_rerun_succeeds(tmp_path):
    port = free_port()
    rows = rows_with([f"down {i}" for i in range(30)])
    with pytest.raises(EndpointError) as err:
        run_shard(
            tmp_path, f"http://127.0.0.1:{port}/v1", rows, retry=RetryConfig(max_attempts=3, backoff_initial_s=0.2)
        )
    assert f"127.0.0.1:{port}" in str(err.value) and "fake-model" in str(err.value)
    assert not (tmp_path / "out.parquet").exists()
    with FakeOpenAIServer() as srv:
        srv.stop()
        srv.start(port=port)  # the server is back on the same address
        table, _, _ = run_shard(tmp_path, f"http://127.0.0.1:{port}/v1", rows)
    assert table.num_rows == 30 and set(table["status"].to_pylist()) == {"ok"}


def test_in_flight_rows_are_bounded(server, tmp_path):
    server.reset(latency_s=0.01)
    pulled = completed = peak = 0

    def rows():
        nonlocal pulled, peak
        for i in range(300):
            pulled += 1
            peak = max(peak, pulled - completed)
            yield {"row_id": f"b{i}", "doc_id": "d", "pages": [1], "text": f"b{i}"}

    async def counting(row, engine):
        nonlocal completed
        out = await process(row, engine)
        completed += 1
        return out

    writer = ShardWriter(tmp_path / "o.parquet", tmp_path / "j.jsonl", "cfg", STAGE)

    async def go():
        async with make_engine(server.base_url, concurrency=ConcurrencyConfig(max=8)) as engine:
            return await run_rows(rows(), counting, writer, engine)

    summary = asyncio.run(go())
    writer.finalize(summary.expected_ids)
    assert peak <= 8 + 2 + 1


def test_bug_in_process_fails_the_job_keeping_finished_rows(server, tmp_path):
    server.reset()
    rows = rows_with([f"bug {i}" for i in range(40)])

    async def buggy(row, engine):
        if row["row_id"] == "r0020":
            await asyncio.sleep(0.05)
            raise KeyError("a bug")
        if row["row_id"] == "r0021":
            raise RecordError("format_violation", "not a number")
        return await process(row, engine)

    writer = ShardWriter(tmp_path / "o.parquet", tmp_path / "j.jsonl", "cfg", STAGE)

    async def go():
        async with make_engine(server.base_url, concurrency=ConcurrencyConfig(max=4)) as engine:
            await run_rows(rows, buggy, writer, engine)

    with pytest.raises(KeyError):
        asyncio.run(go())
    writer.close()
    again = ShardWriter(tmp_path / "o.parquet", tmp_path / "j.jsonl", "cfg", STAGE)
    assert "r0000" in again.done_ids() and "r0021" in again.done_ids() and "r0020" not in again.done_ids()


KILL_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from helpers.engine_rows import run_kill_shard

    out, journal, _, base_url = sys.argv[1:5]
    run_kill_shard(out, journal, base_url)
    """
)


def test_kill_and_resume_redoes_at_most_in_flight(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(KILL_CHILD)
    tests_dir = os.path.dirname(__file__)
    out, journal = tmp_path / "out.parquet", tmp_path / "journal.jsonl"
    clean = tmp_path / "clean"
    clean.mkdir()
    with spawn_fake_server("--latency", "0.05") as (_, base_url):
        import json
        import urllib.request

        def stats():
            with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/_stats") as resp:
                return json.loads(resp.read())

        proc = subprocess.Popen([sys.executable, str(child), str(out), str(journal), tests_dir, base_url])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") > 40:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()
        before = stats()["requests"]
        done_before_kill = journal.read_bytes().count(b"\n") - 1
        subprocess.run([sys.executable, str(child), str(out), str(journal), tests_dir, base_url], check=True)
        after = stats()
        assert not journal.exists()
        # requests redone = those in flight at the kill (at most the concurrency plus slack)
        redone = after["repeated_requests"]
        assert redone <= 8 + 2
        assert after["requests"] == KILL_ROWS + redone and before - done_before_kill <= 10
        # a clean run of the same shard, here in the test's process
        run_kill_shard(clean / "out.parquet", clean / "j.jsonl", base_url)
    resumed = pq.read_table(out).to_pylist()
    reference = pq.read_table(clean / "out.parquet").to_pylist()
    assert resumed == reference
