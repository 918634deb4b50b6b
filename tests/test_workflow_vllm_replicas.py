"""Two replicas of the REAL CPU vLLM (config/deployments/tiny-cpu-vlm.yaml, the tiny random-weight
VLM) serving one stage through the workflow, one of them killed mid-stage: locally with SIGKILL
of its server's process group, and on the real local Slurm (profiles/slurm) with `scancel` of its
job. Both replicas answer requests (counted in each server's own log), the stage finishes with
every page exactly once and the run succeeds; afterwards no job of the run is queued and no
server process is alive. Page classification (stage 04, one structured-output request per page)
is the client; the random model's text is noise, so rows are checked for accounting, never
wording."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from helpers.serving import cmdlines_containing, files_containing
from helpers.slurm import processes_with, sacct_jobs
from helpers.workflow import planned_jobs, run_until, snakemake_cmd
from longdoc_sdg.engine.errors import INFRA_REASONS
from longdoc_sdg.registry import model_stages
from longdoc_sdg.serve.procs import group_alive, http_get
from pdf_factory import numbered_page_pdfs

pytestmark = [pytest.mark.vllm, pytest.mark.workflow]

DEPLOYMENT = "tiny-cpu-vlm"
STAGE = "classify"
# Pages per generated document (one document per shard): 24 requests in three client jobs, so
# the kill can land while a job is part-way through its shard.
DOC_PAGES = (4, 6, 14)
# vLLM's access log: one line per answered request.
ANSWERED = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" 200')


def write_config(workdir: Path, pdf_dir: Path, model_dir: Path, launcher: str) -> Path:
    stages = {stage: {"enabled": False} for stage in model_stages() if stage != STAGE}
    stages[STAGE] = {
        "model": "tiny",
        "settings": {
            "max_tokens": 1500,
            "sampling": {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
        },
    }
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "sharding": {"settings": {"documents_per_shard": 1}},
        "seed": {"settings": {"dpi": 30}},
        "models": {"tiny": {"deployment": DEPLOYMENT}},
        "stages": stages,
        "serving": {
            "enabled": True,
            "run": {
                "launcher": launcher,
                "deployments_dir": str(REPO / "config" / "deployments"),
                "overrides": {
                    DEPLOYMENT: {
                        "model": str(model_dir),
                        "replicas": 2,
                        "min_ready": 2,
                        # Four requests at a time per replica keep both busy on two cores.
                        "max_num_seqs": 4,
                        # The tiny tokenizer spends many tokens on the long classification prompt.
                        # (The deployment's whitespace-free JSON grammar makes its replies close.)
                        "max_model_len": 16384,
                    }
                },
            },
        },
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, profile: str, timeout: int, *args: str) -> subprocess.CompletedProcess:
    cores = 2 if profile == "local" else None
    return run_until(snakemake_cmd(workdir, *args, profile=profile, cores=cores), timeout)


@pytest.fixture(scope="module")
def seeded(tiny_vlm, tmp_path_factory):
    """Seeded shards of generated PDFs (DOC_PAGES); each test classifies them in a copy."""
    _, model_dir, _ = tiny_vlm
    root = tmp_path_factory.mktemp("replicas")
    pdf_dir = root / "pdfs"
    pdf_dir.mkdir()
    numbered_page_pdfs(pdf_dir, DOC_PAGES)
    template = root / "template"
    template.mkdir()
    write_config(template, pdf_dir, model_dir, "local")
    # The seed tables as targets: the manifest job (a checkpoint) lists the shards first.
    seeds = [f"results/seed/{shard:05d}/failures.parquet" for shard in range(len(DOC_PAGES))]
    result = snakemake(template, "local", 600, *seeds)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return template, pdf_dir, model_dir


def workdir_from(seeded, tmp_path: Path, launcher: str) -> Path:
    import shutil

    template, pdf_dir, model_dir = seeded
    workdir = tmp_path / "work"
    shutil.copytree(template, workdir, symlinks=True)
    write_config(workdir, pdf_dir, model_dir, launcher)
    return workdir


def shard_pages(workdir: Path) -> dict[str, int]:
    return {
        p.parent.name: pq.read_metadata(p).num_rows
        for p in sorted((workdir / "results" / "seed").glob("*/pages.parquet"))
    }


def part_way(workdir: Path, pages: dict[str, int]) -> dict[str, int]:
    """Shards whose client job is under way with rows done and rows left: rows journaled so far."""
    found = {}
    for shard, count in pages.items():
        journal = workdir / "results" / ".journal" / STAGE / f"{shard}.jsonl"
        if (workdir / "results" / STAGE / f"{shard}.parquet").exists():
            continue
        try:
            journaled = len(journal.read_text().splitlines()) - 1  # after the header line
        except OSError:
            continue
        if 0 < journaled < count:
            found[shard] = journaled
    return found


def replica_dir(workdir: Path, index: int) -> Path:
    return workdir / "results" / "serve" / "servers" / DEPLOYMENT / f"replica-{index}"


def answered(workdir: Path, index: int) -> int:
    """Requests replica `index` answered, from its server's own log."""
    try:
        return len(ANSWERED.findall((replica_dir(workdir, index) / "server.log").read_text(errors="replace")))
    except OSError:
        return 0


def probe_serving(workdir: Path, runtime: dict) -> dict:
    """While the replicas serve: each one's /v1/models with the run's key, without one and with a
    wrong one, whether the key shows on any process's command line, and each server's process
    group (vLLM's engine core included) alive."""
    key = runtime["api_key"]
    probe = {"key": key, "models": [], "no_key": [], "wrong_key": [], "groups_alive": []}
    for replica in runtime["replicas"]:
        status, body = http_get(f"{replica['base_url']}/models", key, timeout=30)
        probe["models"].append((status, [m["id"] for m in json.loads(body)["data"]] if status == 200 else []))
        probe["no_key"].append(http_get(f"{replica['base_url']}/models", timeout=30)[0])
        probe["wrong_key"].append(http_get(f"{replica['base_url']}/models", "wrong-key", timeout=30)[0])
    probe["key_on_cmdlines"] = cmdlines_containing(key)
    for index in range(2):
        server_pid = json.loads((replica_dir(workdir, index) / "bound.json").read_text())["server_pid"]
        probe["groups_alive"].append(group_alive(server_pid))
    return probe


class MidStageKiller:
    """Watches a run; once replica 1 has answered two requests while a client job is part-way
    through its shard (rows done, rows left), probes the serving (probe_serving) and calls
    `kill(replicas)` once (replicas: the serve record's entries). Also notes each replica's port
    and server pid, to check afterwards that none is alive."""

    def __init__(self, workdir: Path, kill):
        self.workdir = workdir
        self.kill = kill
        self.pages: dict[str, int] = {}
        self.replicas: list[dict] = []
        self.ports: dict[int, int] = {}
        self.server_pids: dict[int, int] = {}
        self.probe: dict | None = None
        self.killed_at: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MidStageKiller":
        self.pages = shard_pages(self.workdir)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        record_path = self.workdir / "results" / "serve" / "servers" / f"{DEPLOYMENT}.json"
        runtime_path = self.workdir / "results" / "serve" / f"{DEPLOYMENT}.runtime.json"
        while not self._stop.wait(0.1):
            try:
                self.replicas = json.loads(record_path.read_text())["replicas"]
            except (OSError, ValueError, KeyError):
                pass
            for index in range(2):
                try:
                    bound = json.loads((replica_dir(self.workdir, index) / "bound.json").read_text())
                    self.ports[index], self.server_pids[index] = bound["port"], bound["server_pid"]
                except (OSError, ValueError, KeyError):
                    pass
            if self.killed_at is None and len(self.replicas) == 2 and answered(self.workdir, 1) >= 2:
                under_way = part_way(self.workdir, self.pages)
                if under_way:
                    try:
                        self.probe = probe_serving(self.workdir, json.loads(runtime_path.read_text()))
                    except Exception as exc:  # reported by check_served_securely
                        self.probe = {"error": repr(exc)}
                    self.kill(self.replicas)
                    self.killed_at = {"part_way": under_way, "victim_answered": answered(self.workdir, 1)}


def check_served_securely(workdir: Path, probe: dict | None) -> str:
    """What probe_serving saw while both replicas served: each lists the model to the run's key
    only (401 without it or with a wrong one), the key is on no command line, both server groups
    live. After the run the key is in no file the run left (server logs, serve log, sentinel).
    Returns the key."""
    assert probe and "error" not in probe, probe
    assert probe["models"] == [(200, ["tiny-vlm"])] * 2, probe
    assert probe["no_key"] == [401, 401] and probe["wrong_key"] == [401, 401], probe
    assert probe["key_on_cmdlines"] == [], probe
    assert probe["groups_alive"] == [True, True], probe
    assert files_containing(workdir, probe["key"]) == []
    return probe["key"]


def check_every_page_once(workdir: Path) -> dict[str, int]:
    """Every shard has each of its pages exactly once, answered or failed for a reason of the
    model's reply (an infrastructure failure would mean a lost replica lost rows)."""
    statuses: dict[str, int] = {}
    for shard, count in shard_pages(workdir).items():
        rows = pq.read_table(workdir / "results" / STAGE / f"{shard}.parquet").to_pylist()
        ids = [r["row_id"] for r in rows]
        assert len(ids) == count and len(set(ids)) == count, shard
        for row in rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            assert row["status"] in ("ok", "failed")
            if row["status"] == "failed":
                assert row["failure_reason"] and row["failure_reason"] not in INFRA_REASONS, row
    return statuses


def ready_after(workdir: Path) -> str:
    """The serve job's own account of the start-up (for the printed timing)."""
    log = workdir / "results" / "logs" / "serve" / f"{DEPLOYMENT}.log"
    found = (
        re.findall(r"ready at \S+ after [\d.]+s \(\d+ of \d+ replicas ready\)", log.read_text()) if log.exists() else []
    )
    return found[-1] if found else "(not ready)"


def check_both_served(counts: dict[int, int], killer: MidStageKiller) -> None:
    assert counts[0] > 0 and counts[1] >= 2
    # After the kill the victim finished at most what it was already running (max_num_seqs);
    # the survivor took every page left.
    assert counts[1] <= killer.killed_at["victim_answered"] + 4
    assert counts[0] + counts[1] >= sum(DOC_PAGES)


def client_logs(workdir: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace") for p in sorted((workdir / "results" / "logs" / STAGE).glob("*.log"))
    )


def check_nothing_left(workdir: Path, killer: MidStageKiller) -> None:
    """No server of the run answers or lives on (vLLM's engine core shares its server's process
    group), no serve wrapper is left and the runtime file is gone."""
    assert sorted(killer.ports) == [0, 1] and sorted(killer.server_pids) == [0, 1], killer.ports
    for index, port in killer.ports.items():
        assert processes_with("vllm.entrypoints.openai.api_server", f"--port {port}") == [], "a server outlived the run"
        assert http_get(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 0, f"replica {index} still answers"
        assert not group_alive(killer.server_pids[index]), f"a process of replica {index}'s server outlived the run"
    assert processes_with("longdoc_sdg.serve", str(workdir)) == [], "a serve wrapper outlived the run"
    assert not (workdir / "results" / "serve" / f"{DEPLOYMENT}.runtime.json").exists()


def test_two_local_replicas_one_sigkilled_mid_stage(seeded, tmp_path):
    """Also the local profile's serving contract: a dry run plans the serve job but starts
    nothing, the key guards each replica and leaks nowhere, teardown leaves only the sentinel,
    and a finished run starts no server."""
    workdir = workdir_from(seeded, tmp_path, "local")
    dry = snakemake(workdir, "local", 300, "-n")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-4000:]
    jobs = planned_jobs(dry.stdout)
    assert {rule: jobs.get(rule) for rule in ("serve", STAGE, "served")} == {"serve": 1, STAGE: 3, "served": 1}
    assert not (workdir / "results" / "serve" / "servers").exists(), "a dry run must not start a server"

    def sigkill_replica_1(replicas) -> None:
        # Like a lost node: the server's whole group (vLLM's engine core included), no goodbye.
        server_pid = json.loads((replica_dir(workdir, 1) / "bound.json").read_text())["server_pid"]
        os.killpg(server_pid, signal.SIGKILL)

    t0 = time.monotonic()
    with MidStageKiller(workdir, sigkill_replica_1) as killer:
        result = snakemake(workdir, "local", 1500)
    print(f"two local real vLLM replicas, one SIGKILLed mid-stage: {time.monotonic() - t0:.0f}s")
    text = result.stdout + result.stderr
    assert killer.killed_at, text[-6000:]
    assert result.returncode == 0, text[-8000:]
    statuses = check_every_page_once(workdir)
    counts = {index: answered(workdir, index) for index in (0, 1)}
    print(f"{ready_after(workdir)}; answered per replica: {counts}; killed at {killer.killed_at}; rows {statuses}")
    check_both_served(counts, killer)
    assert "ejected replica 1" in client_logs(workdir)
    check_nothing_left(workdir, killer)
    check_served_securely(workdir, killer.probe)
    # The sentinel (identity only) stays: the clients' ancient() input.
    assert (workdir / "results" / "serve" / f"{DEPLOYMENT}.sentinel.json").exists()

    again = snakemake(workdir, "local", 300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "localrule serve" not in again.stdout + again.stderr
    assert list((workdir / "results" / "serve" / "servers").glob("*.json")) == []


@pytest.mark.slurm
def test_two_replicas_as_slurm_jobs_one_scancelled_mid_stage(seeded, slurm_cluster, tmp_path):
    """Also the Slurm profile's serving contract: each replica a job in the gpu partition holding
    its GPU, submitted without the key on its command line; the clients cpu jobs; the servers
    stopped once their last client is done; a second run plans nothing. Our own jobs and
    processes only: other runs may share the cluster."""
    workdir = workdir_from(seeded, tmp_path, "auto")  # the slurm profile makes auto mean slurm

    def scancel_replica_1(replicas) -> None:
        subprocess.run(["scancel", replicas[1]["job_id"]], timeout=30, check=True)

    t0 = time.monotonic()
    with MidStageKiller(workdir, scancel_replica_1) as killer:
        result = snakemake(workdir, "slurm", 1500)
    print(f"two real vLLM replicas as Slurm jobs, one scancelled mid-stage: {time.monotonic() - t0:.0f}s")
    text = result.stdout + result.stderr
    job_ids = [r.get("job_id") for r in killer.replicas]
    try:
        assert killer.killed_at, text[-6000:]
        assert result.returncode == 0, text[-8000:]
        statuses = check_every_page_once(workdir)
        counts = {index: answered(workdir, index) for index in (0, 1)}
        print(f"{ready_after(workdir)}; answered per replica: {counts}; killed at {killer.killed_at}; rows {statuses}")
        check_both_served(counts, killer)
        assert "ejected replica 1" in client_logs(workdir)
        key = check_served_securely(workdir, killer.probe)

        client_ids = re.findall(r"submitted with SLURM jobid (\d+)", text)
        assert client_ids, text[-4000:]  # the clients ran as Slurm jobs too
        jobs: dict[str, dict] = {}
        for _ in range(30):  # slurmdbd lags a little behind
            jobs = {j["job_id"]: j for j in sacct_jobs([*job_ids, *client_ids])}
            if all(j in jobs and jobs[j]["state"] not in ("RUNNING", "PENDING") for j in job_ids):
                break
            time.sleep(1)
        for job_id in job_ids:  # each replica its own job in the gpu partition, holding its GPU
            job = jobs[job_id]
            assert job["name"] == f"longdoc-serve-{DEPLOYMENT}", job
            assert job["partition"] == "gpu" and "gres/gpu=1" in job["tres"], job
            assert job["state"].startswith("CANCELLED"), job  # scancel: by the test, or by teardown
            assert job["submit_line"] and key not in job["submit_line"], job
        assert all(jobs[j]["partition"] == "cpu" and jobs[j]["state"] == "COMPLETED" for j in client_ids), jobs

        queued = subprocess.run(
            ["squeue", "-h", "-j", ",".join([*job_ids, *client_ids])], capture_output=True, text=True, timeout=30
        )
        assert queued.stdout.strip() == "", f"jobs of this run left in the queue:\n{queued.stdout}"
        assert f"every client of {DEPLOYMENT} is done; stopped its server" in text
        check_nothing_left(workdir, killer)

        # Everything done: a second run plans nothing, so it submits no serve job.
        again = snakemake(workdir, "slurm", 300, "-n")
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        assert "Nothing to be done" in again.stdout + again.stderr
    finally:
        for job_id in filter(None, job_ids):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
