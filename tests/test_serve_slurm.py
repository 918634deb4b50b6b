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
