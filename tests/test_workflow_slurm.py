"""`snakemake --profile profiles/slurm` on the REAL local Slurm cluster (ci/slurm/up.sh), serving
the REAL CPU vLLM as a GPU job: seed -> OCR -> single-page QA. Afterwards sacct shows the serve
job in the gpu partition holding a GPU GRES and the client jobs in cpu; nothing of the run is
left queued, no server process is alive, and a second run plans nothing."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from helpers.slurm import processes_with, sacct_jobs
from helpers.vllm_config import serving_config, shortest_pdfs

pytestmark = [pytest.mark.slurm, pytest.mark.vllm, pytest.mark.workflow]


def test_slurm_profile_serves_on_gpu_and_runs_clients_on_cpu(slurm_cluster, tiny_vlm, real_pdfs, tmp_path):
    """Our own jobs and processes only: other runs may share the cluster."""
    _, model_dir, _ = tiny_vlm
    config = serving_config(tmp_path, shortest_pdfs(real_pdfs, 1), "auto", model_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def snakemake(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
        cmd = [
            "timeout",
            "-s",
            "INT",
            "-k",
            "60",
            str(timeout),
            "snakemake",
            "--profile",
            "profiles/slurm",
            "--snakefile",
            "workflow/Snakefile",
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "config.yaml"),
            *args,
        ]
        # SIGINT must reach snakemake so a timeout cancels its jobs (a background parent may ignore it).
        return subprocess.run(
            cmd,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout + 200,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    serve_log = tmp_path / "results" / "logs" / "serve" / "tiny-cpu-vlm.log"
    t0 = time.monotonic()
    result = snakemake()
    print(f"slurm profile run with real vLLM served as a GPU job: {time.monotonic() - t0:.0f}s")
    serve_job = re.search(r"started as Slurm job (\d+)", serve_log.read_text()) if serve_log.exists() else None
    try:
        output = result.stdout + result.stderr
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
        assert serve_job, f"the serve rule did not submit a Slurm job:\n{serve_log.read_text()}"
        port = re.search(r"ready at http://[^:]+:(\d+)/v1", serve_log.read_text()).group(1)
        for stage in ("ocr", "single_page_qa"):
            table = pq.read_table(tmp_path / "results" / stage / "00000.parquet")
            assert table.num_rows > 0
            assert set(table.column("status").to_pylist()) <= {"ok", "failed"}

        client_ids = re.findall(r"submitted with SLURM jobid (\d+)", output)
        assert client_ids, output[-4000:]
        ids = [serve_job.group(1), *client_ids]
        jobs = []
        for _ in range(20):  # sacct listings lag a few seconds behind
            jobs = sacct_jobs(ids)
            if len(jobs) == len(ids):
                break
            time.sleep(1)
        serve_jobs = [j for j in jobs if j["job_id"] == serve_job.group(1)]
        assert serve_jobs and serve_jobs[0]["name"] == "longdoc-serve-tiny-cpu-vlm", jobs
        assert serve_jobs[0]["partition"] == "gpu" and "gres/gpu=1" in serve_jobs[0]["tres"], serve_jobs
        clients = [j for j in jobs if j["job_id"] in client_ids]
        assert len(clients) == len(client_ids), jobs
        assert all(j["partition"] == "cpu" and j["state"] == "COMPLETED" for j in clients), clients

        queued = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True, timeout=30)
        assert queued.stdout.strip() == "", f"jobs of this run left in the queue:\n{queued.stdout}"
        assert "every client of tiny-cpu-vlm is done; stopped its server" in output
        assert processes_with("vllm.entrypoints.openai.api_server", f"--port {port}") == [], (
            "the server outlived the run"
        )
        assert processes_with("longdoc_sdg.serve", str(tmp_path)) == [], "the serve wrapper outlived the run"
        assert not (tmp_path / "results" / "serve" / "tiny-cpu-vlm.runtime.json").exists()

        # Everything done: a second run plans nothing, so it submits no serve job.
        again = snakemake("-n", timeout=300)
        assert again.returncode == 0, again.stderr[-4000:]
        assert "Nothing to be done" in again.stdout + again.stderr
    finally:
        if serve_job:
            subprocess.run(["scancel", serve_job.group(1)], capture_output=True, timeout=30)
