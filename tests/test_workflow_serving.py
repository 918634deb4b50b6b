"""The serve rule through Snakemake (local profile), with the FAKE server standing in for vLLM
(tests/deployments/fake-vllm.yaml: a test double that takes vLLM's flags and is ready in about
a second). OCR with the nemotron-parse engine is the client: one request per page.

On the workflow level: serve -> clients -> teardown; a dry run
starts nothing; a finished run starts no server; a crash before ready fails fast with the log
tail; an impostor on the port is never published; a server killed mid-run fails the clients
clearly and the next run re-serves without redoing finished shards; a model change reruns the
clients, a server restart does not; the API key never leaks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from helpers.serving_workflow import (
    DEPLOYMENT,
    DOC_PAGES,
    SERVED,
    Watcher,
    assert_every_page_once,
    assert_unpublished,
    job_logs,
    ocr_outputs,
    output_of,
    replica_bound,
    requests_of,
    runtime_file,
    seed_serving_template,
    serve_dir,
    server_processes,
    shard_pages,
    snakemake,
    workdir_from,
    write_config,
)
from helpers.workflow import planned_jobs

pytestmark = pytest.mark.workflow

# The plan of a run that serves: one server, one OCR client per shard, the `served` stop.
SERVE_AND_EVERY_CLIENT = {"serve": 1, "ocr": len(DOC_PAGES), "served": 1}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A workdir with one seeded shard per document of DOC_PAGES; tests work on copies."""
    return seed_serving_template(tmp_path_factory)


@pytest.fixture(scope="module")
def served_run(seeded, tmp_path_factory):
    """One complete run: serve -> OCR on every shard -> teardown, with slow clients so the
    runtime file (and its key) can be read while they work."""
    template, pdf_dir = seeded
    workdir = workdir_from(
        template,
        tmp_path_factory.mktemp("served"),
        pdf_dir,
        extra_args=["--latency", "0.1"],
        env_vars={"FAKE_OPENAI_SERVER_STATS": str(template.parent / "served-stats.json")},
    )
    t0 = time.monotonic()
    with Watcher(workdir) as watcher:
        result = snakemake(workdir)
    elapsed = time.monotonic() - t0
    print(f"serve -> {len(DOC_PAGES)} OCR shards -> teardown: {elapsed:.1f}s")
    assert result.returncode == 0, output_of(result)[-6000:]
    assert watcher.published and len(watcher.keys) == 1
    return workdir, result, watcher.keys.pop(), template.parent / "served-stats.json"


def test_dry_run_plans_serving_but_starts_nothing(seeded, tmp_path):
    template, pdf_dir = seeded
    workdir = workdir_from(template, tmp_path, pdf_dir)
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, output_of(result)[-4000:]
    jobs = planned_jobs(result.stdout)
    assert {rule: jobs.get(rule) for rule in ("serve", "ocr", "served")} == SERVE_AND_EVERY_CLIENT
    assert "seed" not in jobs
    assert server_processes(workdir) == []
    assert not runtime_file(workdir).exists()
    assert not (serve_dir(workdir) / "servers").exists()


def test_serve_clients_teardown(served_run):
    workdir, result, _, stats_path = served_run
    pages = shard_pages(workdir)
    for shard, count in pages.items():
        table = pq.read_table(workdir / "results" / "ocr" / f"{shard}.parquet")
        assert table.num_rows == count
        assert set(table.column("status").to_pylist()) == {"ok"}
        assert set(table.column("model").to_pylist()) == {SERVED}
    # The fake server answered exactly one request per page.
    assert json.loads(stats_path.read_text())["requests"] == sum(pages.values())
    # Stopped as soon as its last client finished (by `served`), not only at the end of the run.
    assert "every client of fake-vllm is done; stopped its server" in output_of(result)
    assert "stopped servers: fake-vllm" not in output_of(result)
    assert_unpublished(workdir)
    # The sentinel stays, identity only: the clients' ancient() input for later runs.
    sentinel = json.loads((serve_dir(workdir) / f"{DEPLOYMENT}.sentinel.json").read_text())
    assert set(sentinel) == {"deployment", "model", "served_name", "config_hash"}
    assert sentinel["deployment"] == DEPLOYMENT and sentinel["served_name"] == SERVED


def test_api_key_never_leaks(served_run):
    workdir, result, key, _ = served_run
    assert len(key) >= 32
    assert key not in output_of(result)
    leaks = [str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaks == [], "the API key leaked into these files"
    assert any((workdir / ".snakemake" / "metadata").iterdir()), "no Snakemake metadata was searched"


def test_model_change_reruns_clients_but_a_server_restart_does_not_and_a_finished_run_starts_no_server(
    served_run, tmp_path
):
    done, _, _, _ = served_run
    workdir = tmp_path / "work"
    shutil.copytree(done, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "config.yaml").read_text())

    renamed = dict(config)
    run = config["serving"]["run"]
    renamed["serving"] = {
        **config["serving"],
        "run": {
            **run,
            "overrides": {DEPLOYMENT: {**run["overrides"][DEPLOYMENT], "served_model_name": "another-model"}},
        },
    }
    (workdir / "renamed.yaml").write_text(yaml.safe_dump(renamed))
    result = snakemake(workdir, "-n", configfile="renamed.yaml")
    assert result.returncode == 0, output_of(result)[-4000:]
    jobs = planned_jobs(result.stdout)
    assert {rule: jobs.get(rule) for rule in ("serve", "ocr", "served")} == SERVE_AND_EVERY_CLIENT

    # Moving the server (launcher, walltime, port, latency of the double's environment) does not.
    moved = dict(config)
    moved["serving"] = {
        **config["serving"],
        "run": {
            **run,
            "launcher": "local",
            "overrides": {DEPLOYMENT: {**run["overrides"][DEPLOYMENT], "walltime": 5, "stop_grace_s": 1}},
        },
    }
    (workdir / "moved.yaml").write_text(yaml.safe_dump(moved))
    result = snakemake(workdir, "-n", configfile="moved.yaml")
    assert "Nothing to be done" in output_of(result), output_of(result)[-4000:]

    before = ocr_outputs(workdir)
    restart = snakemake(workdir, "--forcerun", "serve")
    assert restart.returncode == 0, output_of(restart)[-4000:]
    # The plan the run printed before it started: the server, no client.
    restart_jobs = planned_jobs(output_of(restart))
    assert "ocr" not in restart_jobs and restart_jobs.get("serve") == 1, restart_jobs
    assert "localrule serve:" in output_of(restart)
    assert ocr_outputs(workdir) == before
    assert_unpublished(workdir)

    # The run finished: running it again starts no server and redoes nothing.
    again = snakemake(workdir)
    assert again.returncode == 0, output_of(again)[-4000:]
    assert "Nothing to be done" in output_of(again)
    assert "localrule serve" not in output_of(again)
    assert ocr_outputs(workdir) == before
    assert_unpublished(workdir)


def test_forced_shard_gets_a_server(served_run, tmp_path):
    done, _, _, _ = served_run
    workdir = tmp_path / "work"
    shutil.copytree(done, workdir, symlinks=True)
    shard = sorted(shard_pages(workdir))[0]
    before = ocr_outputs(workdir)
    result = snakemake(workdir, "--force", f"results/ocr/{shard}.parquet")
    assert result.returncode == 0, output_of(result)[-4000:]
    # No serve job in this DAG: the client serves the deployment itself, teardown stops it.
    assert planned_jobs(output_of(result)) == {"ocr": 1}
    client_log = (workdir / "results" / "logs" / "ocr" / f"{shard}.log").read_text()
    assert "no serve job of this run started it; serving it here" in client_log
    assert "stopped servers: fake-vllm" in output_of(result)
    after = ocr_outputs(workdir)
    assert after[shard] != before[shard]
    assert {s: t for s, t in after.items() if s != shard} == {s: t for s, t in before.items() if s != shard}
    assert_unpublished(workdir)


def test_server_left_by_a_killed_run_is_forgotten_and_its_clients_serve_again(served_run, tmp_path):
    """A SIGKILLed run leaves its server published though it is gone: this run's DAG plans no
    serve job (the runtime file exists); onstart forgets the dead server, the client serves the
    deployment itself, `served` and teardown stop it."""
    done, _, _, _ = served_run
    workdir = tmp_path / "work"
    shutil.copytree(done, workdir, symlinks=True)
    shard = sorted(shard_pages(workdir))[0]
    (workdir / "results" / "ocr" / f"{shard}.parquet").unlink()
    gone = subprocess.Popen(["true"])
    gone.wait()
    instance = "killed-run"
    runtime_file(workdir).write_text(json.dumps({"instance": instance, "base_url": "http://127.0.0.1:9/v1"}))
    record = serve_dir(workdir) / "servers" / f"{DEPLOYMENT}.json"
    record.parent.mkdir(exist_ok=True)
    replica = {"index": 0, "instance": instance, "pid": gone.pid, "pgid": gone.pid, "start_time": 1}
    replica["bound_path"] = str(serve_dir(workdir) / "ghost.bound.json")
    record.write_text(
        json.dumps(
            {
                "launcher": "local",
                "deployment": DEPLOYMENT,
                "instance": instance,
                "stop_grace_s": 0,
                "runtime_path": str(runtime_file(workdir)),
                "heartbeat_path": f"{runtime_file(workdir)}.heartbeat",
                "sentinel_path": str(serve_dir(workdir) / f"{DEPLOYMENT}.sentinel.json"),
                "record_path": str(record),
                "replicas": [replica],
            }
        )
    )
    result = snakemake(workdir)
    text = output_of(result)
    assert result.returncode == 0, text[-6000:]
    # The plan the run printed before onstart forgot the dead server: no serve job, one client.
    jobs = planned_jobs(text)
    assert "serve" not in jobs and jobs.get("ocr") == 1, text[-3000:]
    assert "servers of an earlier run are gone, will serve again: fake-vllm" in text
    client_log = (workdir / "results" / "logs" / "ocr" / f"{shard}.log").read_text()
    assert "no serve job of this run started it; serving it here" in client_log
    table = pq.read_table(workdir / "results" / "ocr" / f"{shard}.parquet")
    assert table.num_rows == shard_pages(workdir)[shard] and set(table.column("status").to_pylist()) == {"ok"}
    assert_unpublished(workdir)


def test_crash_before_ready_fails_fast_with_log_tail(seeded, tmp_path):
    template, pdf_dir = seeded
    workdir = workdir_from(
        template, tmp_path, pdf_dir, extra_args=["--startup-delay", "1", "--crash-on-start"], ready_timeout_s=600
    )
    result = snakemake(workdir)
    assert result.returncode != 0
    text = output_of(result)
    # Noticed as an exit, not by waiting out the 600 s ready timeout.
    assert "Error in rule serve" in text
    assert "deployment fake-vllm: the server exited before it was ready" in text
    assert "RuntimeError: engine core failed to start (injected by --crash-on-start)" in text
    assert ocr_outputs(workdir) == {}
    assert not (serve_dir(workdir) / f"{DEPLOYMENT}.sentinel.json").exists()
    assert_unpublished(workdir)


def test_impostor_listing_another_model_is_never_published(seeded, tmp_path):
    template, pdf_dir = seeded
    # The double answers /health but lists another model; the ready timeout ends the wait
    # (the double answers within a second or two, so the refusal names what it lists).
    workdir = workdir_from(
        template, tmp_path, pdf_dir, extra_args=["--pretend", "someone-elses-model"], ready_timeout_s=8
    )
    t0 = time.monotonic()
    with Watcher(workdir) as watcher:
        result = snakemake(workdir)
    print(f"impostor refused after {time.monotonic() - t0:.1f}s")
    assert result.returncode != 0
    assert not watcher.published, "a server listing another model was published"
    text = output_of(result)
    assert "Error in rule serve" in text
    assert "someone-elses-model" in text and f"not '{SERVED}'" in text, text[-6000:]
    assert ocr_outputs(workdir) == {}
    assert not (serve_dir(workdir) / f"{DEPLOYMENT}.sentinel.json").exists()
    assert_unpublished(workdir)


def test_server_killed_mid_run_then_next_run_finishes_without_redoing_shards(seeded, tmp_path):
    template, pdf_dir = seeded
    stats = [tmp_path / "stats-1.json", tmp_path / "stats-2.json"]
    # One request at a time, 0.3 s each: the 2-page shard finishes while the 14-page one works.
    slow = ["--latency", "0.3", "--max-num-seqs", "1"]
    workdir = workdir_from(
        template, tmp_path, pdf_dir, extra_args=slow, env_vars={"FAKE_OPENAI_SERVER_STATS": str(stats[0])}
    )
    pages = shard_pages(workdir)

    t0 = time.monotonic()

    journals = workdir / "results" / ".journal" / "ocr"

    def one_shard_done_another_under_way() -> bool:
        # Jobs start in any order under load: wait for a finished shard and an unfinished one
        # that has journaled some rows but not all.
        done = ocr_outputs(workdir)
        if not done:
            return False
        for shard, count in pages.items():
            try:
                journaled = len((journals / f"{shard}.jsonl").read_text().splitlines())
            except OSError:
                continue
            if shard not in done and 0 < journaled < count:
                return True
        return False

    with Watcher(workdir, kill_when=one_shard_done_another_under_way) as watcher:
        first = snakemake(workdir)
    print(f"run with the server killed: failed after {time.monotonic() - t0:.1f}s")
    assert watcher.killed_pid is not None, output_of(first)[-4000:]
    assert first.returncode != 0
    text = output_of(first)
    assert "server for deployment fake-vllm" in text
    assert "is gone" in text or "is not running" in text
    assert "rerun — the serve rule will start it again" in text
    # The job the server died under says so (the engine's own error names only the URL).
    assert "It went away during this job" in text, text[-8000:]
    assert_unpublished(workdir)
    finished = ocr_outputs(workdir)
    assert finished and len(finished) < len(pages), finished
    first_requests = json.loads(stats[0].read_text())["requests"]

    # The double's stats file is an env var (not identity): no rerun from it.
    write_config(workdir, pdf_dir, extra_args=slow, env_vars={"FAKE_OPENAI_SERVER_STATS": str(stats[1])})
    t0 = time.monotonic()
    second = snakemake(workdir)
    print(f"next run re-served and finished in {time.monotonic() - t0:.1f}s")
    assert second.returncode == 0, output_of(second)[-6000:]
    # The plan it printed before starting: the unfinished shards only, and their server.
    unfinished = sorted(set(pages) - set(finished))
    planned = {"serve": 1, "ocr": len(unfinished), "served": 1, "ledger": 1, "stats": 1, "summary": 1, "all": 1}
    assert planned_jobs(output_of(second)) == planned  # the closing summary reads the run statistics
    assert "localrule serve:" in output_of(second)
    after = ocr_outputs(workdir)
    assert sorted(after) == sorted(pages)
    assert {s: after[s] for s in finished} == finished, "a finished shard was redone"
    # The new server only saw the unfinished shards' pages (fewer where rows were journaled).
    second_requests = json.loads(stats[1].read_text())["requests"]
    assert 0 < second_requests <= sum(pages[s] for s in unfinished)
    assert first_requests + second_requests >= sum(pages.values())
    for shard, count in pages.items():
        table = pq.read_table(workdir / "results" / "ocr" / f"{shard}.parquet")
        assert table.num_rows == count and set(table.column("status").to_pylist()) == {"ok"}
    assert_unpublished(workdir)


def test_two_replicas_one_sigkilled_mid_stage_the_run_still_succeeds(seeded, tmp_path):
    template, pdf_dir = seeded
    stats = tmp_path / "stats.json"
    workdir = workdir_from(
        template,
        tmp_path,
        pdf_dir,
        replicas=2,
        min_ready=2,
        extra_args=["--latency", "0.3", "--max-num-seqs", "2"],
        env_vars={"FAKE_OPENAI_SERVER_STATS": str(stats)},
    )
    victim = Path(f"{stats}.replica-1")
    killed = []

    def kill_replica_once_it_served() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if requests_of(victim) >= 3:
                pid = replica_bound(workdir, 1)["server_pid"]
                os.killpg(pid, signal.SIGKILL)  # a lost node: no goodbye
                killed.append(requests_of(victim))
            time.sleep(0.05)

    thread = threading.Thread(target=kill_replica_once_it_served, daemon=True)
    thread.start()
    result = snakemake(workdir)
    thread.join(5)
    text = output_of(result)
    assert killed, text[-4000:]
    assert result.returncode == 0, text[-6000:]
    assert "ejected replica 1" in job_logs(workdir)
    assert_every_page_once(workdir)
    # Both served; the survivor took the rest, the victim nothing after its death.
    assert requests_of(victim) <= killed[0] + 2  # at most what was already arriving
    assert requests_of(stats) > 0
    assert_unpublished(workdir)


def test_elastic_second_replica_joins_running_clients(seeded, tmp_path):
    template, pdf_dir = seeded
    stats = tmp_path / "stats.json"
    # Replica 1 keeps loading until the test opens its gate, which it does once replica 0 has
    # served clients (min_ready: 1); about 18 requests of 1 s each are left for it to join.
    gate = tmp_path / "replica-1-may-start"
    workdir = workdir_from(
        template,
        tmp_path,
        pdf_dir,
        replicas=2,
        min_ready=1,
        extra_args=["--latency", "1.0", "--max-num-seqs", "1", "--replica-start-gate", f"1={gate}"],
        env_vars={"FAKE_OPENAI_SERVER_STATS": str(stats)},
    )
    late = Path(f"{stats}.replica-1")
    first_request_of_late_replica_after_clients_started = []

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and requests_of(stats) == 0:
            time.sleep(0.05)
        gate.touch()
        while time.monotonic() < deadline:
            if requests_of(late) > 0:
                first_request_of_late_replica_after_clients_started.append(requests_of(stats))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    result = snakemake(workdir)
    thread.join(5)
    text = output_of(result)
    assert result.returncode == 0, text[-6000:]
    # Published with replica 0 alone, replica 1 admitted later; then it got requests while
    # replica 0 had already served some (the clients were running before it joined).
    assert "1 replica(s) still starting; admitter" in job_logs(workdir)
    assert first_request_of_late_replica_after_clients_started, text[-4000:]
    assert first_request_of_late_replica_after_clients_started[0] > 0
    assert requests_of(late) > 0
    assert requests_of(stats) + requests_of(late) == sum(shard_pages(workdir).values())
    assert_every_page_once(workdir)
    assert_unpublished(workdir)


def test_ledger_has_gpu_time_per_deployment_and_per_accepted_row(served_run):
    workdir, _, _, _ = served_run
    ledger = json.loads((workdir / "results" / "report" / "ledger.json").read_text())
    deployment = ledger["deployments"][DEPLOYMENT]
    assert deployment["instances"] == 1 and deployment["replicas_ready"] == 1
    # fake-vllm.yaml asks for one GPU per replica: GPU-seconds = replica-seconds.
    assert deployment["gpu_seconds"] == deployment["replica_seconds"] > 0
    # Scraped from the server's /metrics just before it was stopped: one request per page.
    assert deployment["requests"] == sum(shard_pages(workdir).values())
    assert deployment["prompt_tokens"] > 0 and deployment["generation_tokens"] > 0
    ocr = ledger["stages"]["ocr"]
    assert ocr["deployment"] == DEPLOYMENT and ocr["accepted_rows"] == sum(shard_pages(workdir).values())
    assert ocr["gpu_seconds"] == deployment["gpu_seconds"]  # its only stage
    assert ocr["gpu_hours_per_1000_accepted"] == pytest.approx(
        ocr["gpu_seconds"] / 3600 / (ocr["accepted_rows"] / 1000), rel=1e-3
    )
    assert (workdir / "results" / "report" / "figures" / "ledger.png").stat().st_size > 0
