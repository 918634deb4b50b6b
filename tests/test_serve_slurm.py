"""The Slurm launcher on the real local cluster (ci/slurm/up.sh): the serve job runs the
wrapper in partition gpu with a GPU GRES; teardown scancels it and waits for squeue."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from helpers.serving import fake_deployment, require, slurm_available, wait_until
from longdoc_sdg.serve import ServeError, serve, teardown, verify_endpoint
from longdoc_sdg.serve.procs import http_get

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def cluster():
    require(slurm_available(), "no usable Slurm (sinfo missing or failing); run ci/slurm/up.sh")


@pytest.fixture
def paths(tmp_path):
    state = tmp_path / "state"
    box = {"sentinel": tmp_path / "s.json", "runtime": tmp_path / "r.json", "state": state}
    yield box
    teardown(state)


def _sacct(job_id: str, fields: str) -> str:
    result = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", fields], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def _squeue(job_id: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def test_serve_job_in_gpu_partition_with_gres_and_teardown(tmp_path, paths):
    dep = fake_deployment(tmp_path, name="slurmfake", partition="gpu", gpus=1)
    t0 = time.monotonic()
    info = serve(dep, paths["sentinel"], paths["runtime"], launcher="slurm", state_dir=paths["state"])
    print(f"slurm fake server ready in {time.monotonic() - t0:.2f}s")
    job_id = info["job_id"]
    runtime = json.loads(paths["runtime"].read_text())
    key = runtime["api_key"]
    assert runtime["job_id"] == job_id and runtime["pid"] is None
    verify_endpoint(paths["runtime"])
    assert http_get(f"{runtime['url']}/v1/models")[0] == 401

    # slurmdbd learns of the job's start a moment later.
    assert wait_until(lambda: _sacct(job_id, "State") == "RUNNING", 30)
    partition, tres, state = _sacct(job_id, "Partition,AllocTRES,State").split("|")
    assert partition == "gpu" and "gres/gpu=1" in tres and state == "RUNNING"
    # Nothing Slurm records about the job may show the key.
    everything = (
        _sacct(job_id, "JobName,SubmitLine,WorkDir,Comment,AllocTRES")
        + subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, timeout=30).stdout
    )
    assert "longdoc-serve-slurmfake" in everything and key not in everything
    assert key not in paths["sentinel"].read_text()
    assert key not in open(runtime["server_log"]).read()

    t0 = time.monotonic()
    assert teardown(paths["state"]) == ["slurmfake"]
    print(f"slurm teardown (scancel + squeue empty) in {time.monotonic() - t0:.2f}s")
    assert _squeue(job_id) == ""
    assert wait_until(lambda: _sacct(job_id, "State").startswith("CANCELLED"), 30)
    assert not paths["runtime"].exists() and paths["sentinel"].exists()
    assert http_get(f"{runtime['url']}/health", timeout=2)[0] == 0
    assert teardown(paths["state"]) == []


def test_crash_in_slurm_job_fails_fast_with_log_tail(tmp_path, paths):
    dep = fake_deployment(tmp_path, name="slurmcrash", shim_args="--crash-after 1", ready_timeout_s=600)
    with pytest.raises(ServeError) as caught:
        serve(dep, paths["sentinel"], paths["runtime"], launcher="slurm", state_dir=paths["state"])
    # The job's own failure (its log tail), not the 600 s ready timeout.
    assert "CUDA out of memory (simulated by the shim)" in str(caught.value)
    assert "Slurm job" in str(caught.value)
    assert not paths["sentinel"].exists()


def test_replicas_as_slurm_jobs_one_cancelled_one_queued_all_gone_after_teardown(tmp_path, paths):
    """Three replicas of one GPU each on a node with two: two run (each in gpu with its GRES),
    the third stays queued. scancel of a running one: requests go on to the other; teardown
    cancels the rest, the queued one included. FAKE server (test double) as vLLM."""
    import asyncio

    from helpers.replicas import fake_replicas
    from longdoc_sdg.engine import ChatEngine, ConcurrencyConfig, EndpointConfig, RetryConfig
    from longdoc_sdg.serve import read_replicas

    dep = fake_replicas(
        name="slurmpool", replicas=3, min_ready=2, partition="gpu", gpus=1, mem_mb=500, cpus=1, walltime=10
    )
    serve(dep, paths["sentinel"], paths["runtime"], launcher="slurm", state_dir=paths["state"])
    record = json.loads((paths["state"] / "servers" / "slurmpool.json").read_text())
    job_ids = [r["job_id"] for r in record["replicas"]]
    runtime = json.loads(paths["runtime"].read_text())
    running = [r["job_id"] for r in runtime["replicas"]]
    assert len(running) == 2 and len(set(job_ids)) == 3
    queued = next(j for j in job_ids if j not in running)
    assert _squeue(queued) == "PENDING"
    for job_id in running:
        assert wait_until(lambda job_id=job_id: _sacct(job_id, "State") == "RUNNING", 30)
        partition, tres = _sacct(job_id, "Partition,AllocTRES").split("|")
        assert partition == "gpu" and "gres/gpu=1" in tres

    endpoint = EndpointConfig(
        base_url=runtime["base_url"], model=runtime["model"], api_key=runtime["api_key"], request_timeout_s=20
    )

    async def use_it():
        engine = ChatEngine(
            endpoint,
            concurrency=ConcurrencyConfig(max=4),
            retry=RetryConfig(max_attempts=3),
            replicas=lambda: read_replicas(paths["runtime"]),
        )
        async with engine:

            async def ask(i):
                await engine.chat([{"role": "user", "content": f"q{i}"}], max_tokens=8)

            await asyncio.gather(*(ask(i) for i in range(20)))
            subprocess.run(["scancel", running[0]], check=True, timeout=30)
            assert wait_until(lambda: _squeue(running[0]) == "", 60)
            await asyncio.gather(*(ask(i) for i in range(20, 60)))
            return {r["base_url"]: r for r in engine.stats()["replicas"]}

    stats = asyncio.run(use_it())
    by_job = {r["job_id"]: stats[r["base_url"]] for r in runtime["replicas"]}
    assert by_job[running[0]]["requests"] > 0 and by_job[running[1]]["requests"] > 0
    assert not by_job[running[0]]["admitted"]

    assert teardown(paths["state"]) == ["slurmpool"]
    assert [j for j in job_ids if _squeue(j)] == []
