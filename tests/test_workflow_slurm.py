"""`snakemake --profile profiles/slurm` on the REAL local Slurm cluster (ci/slurm/up.sh), serving
the REAL CPU vLLM as a GPU job: seed -> OCR -> single-page QA. Afterwards sacct shows the serve
job in the gpu partition holding a GPU GRES and the client jobs in cpu; nothing is left queued
and no server process is alive."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from test_workflow_vllm import serving_config, shortest_pdfs, vllm_processes

pytestmark = [pytest.mark.slurm, pytest.mark.vllm, pytest.mark.workflow]


def sacct_since(start: str) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "--parsable2", "-S", start, "-o", "JobID,JobName,Partition,AllocTRES,State"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    fields = ("job_id", "name", "partition", "tres", "state")
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def test_slurm_profile_serves_on_gpu_and_runs_clients_on_cpu(slurm_cluster, tiny_vlm, real_pdfs, tmp_path):
    _, model_dir, _ = tiny_vlm
    before = vllm_processes()
    config = serving_config(tmp_path, shortest_pdfs(real_pdfs, 1), "auto", model_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    start = (datetime.datetime.now() - datetime.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S")

    cmd = [
        "timeout", "-s", "INT", "-k", "60", "1500",
        "snakemake", "--profile", "profiles/slurm", "--snakefile", "workflow/Snakefile",
        "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
    ]
    # SIGINT must reach snakemake so a timeout cancels its jobs (a background parent may ignore it).
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=1700,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
        for stage in ("ocr", "single_page_qa"):
            table = pq.read_table(tmp_path / "results" / stage / "00000.parquet")
            assert table.num_rows > 0
            assert set(table.column("status").to_pylist()) <= {"ok", "failed"}

        jobs = []
        for _ in range(20):  # sacct listings lag a few seconds behind
            jobs = sacct_since(start)
            if any(j["name"].startswith("longdoc-serve-") for j in jobs):
                break
            time.sleep(1)
        serve_jobs = [j for j in jobs if j["name"] == "longdoc-serve-tiny-cpu-vlm"]
        assert serve_jobs, jobs
        assert all(j["partition"] == "gpu" and "gres/gpu" in j["tres"] for j in serve_jobs), serve_jobs
        clients = [j for j in jobs if not j["name"].startswith("longdoc-serve-")]
        assert clients and all(j["partition"] == "cpu" for j in clients), clients
        assert all(j["state"] == "COMPLETED" for j in clients), clients

        queued = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30).stdout
        assert queued.strip() == "", f"jobs left in the queue:\n{queued}"
        assert vllm_processes() == before, "the server outlived the run"
    finally:
        subprocess.run(["scancel", "--name", "longdoc-serve-tiny-cpu-vlm"], capture_output=True, timeout=30)
