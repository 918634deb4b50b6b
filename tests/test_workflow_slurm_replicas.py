"""`snakemake --profile profiles/slurm` on the REAL local Slurm cluster with a deployment of two
replicas; the FAKE OpenAI server (test double, tests/deployments/fake-vllm.yaml) stands in for
vLLM so that two servers fit on two cores. Each replica is its own serve job in the gpu partition
holding its GRES, both get requests, one is scancel'd mid-stage: the stage still finishes with
every page exactly once; afterwards none of the run's jobs is queued and no server is alive."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from helpers.serving import require, slurm_available
from helpers.serving_workflow import (
    DEPLOYMENT,
    assert_every_page_once,
    output_of,
    requests_of,
    seed_serving_template,
    serve_dir,
    server_processes,
    shard_pages,
    workdir_from,
)

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


def squeue_state(job_id: str) -> str:
    result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


def sacct(job_id: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "Partition,AllocTRES,State"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    return out.split("|") if out else []


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return seed_serving_template(tmp_path_factory)


def test_two_replicas_as_slurm_jobs_one_scancelled_mid_stage(seeded, tmp_path):
    require(slurm_available(), "no usable Slurm (sinfo missing or failing); run ci/slurm/up.sh")
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
    record_path = serve_dir(workdir) / "servers" / f"{DEPLOYMENT}.json"
    victim_stats = Path(f"{stats}.replica-1")
    cancelled: list[str] = []
    job_ids: list[str] = []

    def cancel_replica_once_it_served() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not cancelled:
            try:
                record = json.loads(record_path.read_text())
                job_ids[:] = [r["job_id"] for r in record["replicas"]]
            except (OSError, ValueError, KeyError):
                pass
            if len(job_ids) == 2 and requests_of(victim_stats) >= 3:
                subprocess.run(["scancel", job_ids[1]], timeout=30, check=True)
                cancelled.append(job_ids[1])
            time.sleep(0.1)

    thread = threading.Thread(target=cancel_replica_once_it_served, daemon=True)
    thread.start()
    cmd = [
        "timeout",
        "-s",
        "INT",
        "-k",
        "60",
        "900",
        "snakemake",
        "--profile",
        "profiles/slurm",
        "--snakefile",
        "workflow/Snakefile",
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1100)
    thread.join(5)
    text = output_of(result)
    assert cancelled, text[-4000:]
    assert result.returncode == 0, text[-6000:]
    assert "submitted with SLURM jobid" in text  # clients ran as Slurm jobs, the servers too
    assert_every_page_once(workdir)
    assert requests_of(stats) > 0 and requests_of(victim_stats) >= 3
    assert requests_of(stats) + requests_of(victim_stats) >= sum(shard_pages(workdir).values())
    for job_id in job_ids:
        fields = []
        for _ in range(30):  # slurmdbd lags a little
            fields = sacct(job_id)
            if fields and fields[2] not in ("RUNNING", "PENDING"):
                break
            time.sleep(1)
        partition, tres, state = fields
        assert partition == "gpu" and "gres/gpu=1" in tres, fields
        assert state.startswith("CANCELLED"), fields
    assert [j for j in job_ids if squeue_state(j)] == []
    assert server_processes(workdir) == []
    assert not (serve_dir(workdir) / f"{DEPLOYMENT}.runtime.json").exists()
