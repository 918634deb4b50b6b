"""Against the real local Slurm cluster (ci/slurm/up.sh): the slurm profile
places jobs in the cpu and gpu partitions, GPU jobs get a GRES, and jobs
cancelled outside Snakemake are noticed instead of polled forever."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
UP_HINT = "no running Slurm cluster: start it with `bash ci/slurm/up.sh` (as root)"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def _sh(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo not on PATH"
    try:
        res = _sh("sinfo", "-h", "-o", "%P %a", timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if res.returncode != 0:
        return f"sinfo failed: {res.stderr.strip()[-300:]}"
    parts = {line.split()[0].rstrip("*") for line in res.stdout.splitlines() if line.strip()}
    if not {"cpu", "gpu"} <= parts:
        return f"partitions cpu and gpu missing (have {sorted(parts)})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    # Under CI the cluster is part of the job: its absence is a failure.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {UP_HINT} ({problem})")
    pytest.skip(f"{UP_HINT} ({problem})")


def _jobs_in(workdir: Path) -> list[str]:
    res = _sh("squeue", "-h", "-o", "%i|%Z")
    out = []
    for line in res.stdout.splitlines():
        jid, _, wd = line.partition("|")
        if wd == str(workdir) or wd.startswith(f"{workdir}/"):
            out.append(jid.strip())
    return out


@pytest.fixture
def sweep(slurm_cluster, tmp_path: Path):
    """Cancel whatever a test left behind: jobs run from tmp_path or named."""
    names: list[str] = []
    yield names
    ids = _jobs_in(tmp_path)
    if ids:
        _sh("scancel", *ids)
    for name in names:
        _sh("scancel", "--name", name)


def _reset_sigint() -> None:
    # A non-interactive parent may hand down an ignored SIGINT; then
    # `timeout -s INT` could not make Snakemake cancel its jobs.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snakemake_cmd(workdir: Path, limit: int, *args: str) -> list[str]:
    # SIGINT makes Snakemake scancel its jobs; -k is the backstop.
    return [
        "timeout", "-s", "INT", "-k", "30", str(limit),
        "snakemake", "--profile", str(PROFILE), "--directory", str(workdir), *args,
    ]  # fmt: skip


def _sacct(job_ids: list[str], deadline_s: float = 60) -> dict[str, dict[str, str]]:
    """Final accounting rows per job id (waits for slurmdbd to catch up)."""
    fields = ["JobID", "State", "Partition", "AllocTRES", "ExitCode"]
    deadline = time.monotonic() + deadline_s
    while True:
        res = _sh("sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", ",".join(fields))
        rows = {}
        for line in res.stdout.splitlines():
            row = dict(zip(fields, line.split("|")))
            rows[row["JobID"]] = row
        done = all(jid in rows and rows[jid]["State"].split()[0] in FINAL_STATES for jid in job_ids)
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(1)


TWO_RULES = textwrap.dedent(
    """
    rule all:
        input: "gpu.txt"

    rule on_cpu:
        output: "cpu.txt"
        shell: "echo $SLURM_JOB_ID > {output}"

    rule on_gpu:
        input: "cpu.txt"
        output: "gpu.txt"
        shell: "echo $SLURM_JOB_ID > {output}"
    """
)


def test_profile_runs_cpu_and_gpu_rules_in_their_partitions(sweep, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(TWO_RULES)
    res = subprocess.run(
        # Same mechanism as `set-resources:` in a profile.
        _snakemake_cmd(tmp_path, 240, "--set-resources", "on_gpu:gpu=1", "on_gpu:slurm_partition=gpu"),
        cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=_reset_sigint,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    cpu_id = (tmp_path / "cpu.txt").read_text().strip()
    gpu_id = (tmp_path / "gpu.txt").read_text().strip()
    assert cpu_id.isdigit() and gpu_id.isdigit(), "rules did not run inside Slurm jobs"
    rows = _sacct([cpu_id, gpu_id])
    assert set(rows) == {cpu_id, gpu_id}, rows
    cpu, gpu = rows[cpu_id], rows[gpu_id]
    assert cpu["State"] == "COMPLETED" and gpu["State"] == "COMPLETED", rows
    assert cpu["Partition"] == "cpu", cpu
    assert gpu["Partition"] == "gpu", gpu
    assert "gres/gpu" in gpu["AllocTRES"], gpu
    assert "gres/gpu" not in cpu["AllocTRES"], cpu


def test_gpu_job_can_be_cancelled(sweep):
    name = f"longdoc-test-cancel-{uuid.uuid4().hex[:8]}"
    sweep.append(name)
    res = _sh(
        "sbatch", "--parsable", "--partition", "gpu", "--gres", "gpu:1",
        "--job-name", name, "--output", "/dev/null", "--wrap", "sleep 60",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]

    deadline = time.monotonic() + 30
    while _sh("squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, "gpu job never started"
        time.sleep(0.5)

    assert _sh("scancel", job_id).returncode == 0
    deadline = time.monotonic() + 30
    while job_id in _sh("squeue", "-h", "-o", "%i").stdout.split():
        assert time.monotonic() < deadline, "cancelled job still in squeue"
        time.sleep(0.5)
    state = _sacct([job_id])[job_id]["State"]
    assert state.startswith("CANCELLED"), state


SLOW_RULE = textwrap.dedent(
    """
    rule slow:
        output: "slow.txt"
        shell: "sleep 300 && touch {output}"
    """
)


def test_job_cancelled_outside_snakemake_fails_the_run(sweep, tmp_path: Path):
    """The profile's squeue status command must notice an external scancel;
    with sacct, plugin 2.8.0 would keep polling a 'CANCELLED by 0' job."""
    (tmp_path / "Snakefile").write_text(SLOW_RULE)
    proc = subprocess.Popen(
        _snakemake_cmd(tmp_path, 240, "--retries", "0"),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_reset_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (ids := _jobs_in(tmp_path)):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "snakemake submitted no job"
            time.sleep(0.5)
        _sh("scancel", *ids)
        out, _ = proc.communicate(timeout=120)  # a bound, not a timing assert
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    assert proc.returncode not in (0, 124), out[-3000:]
    assert not (tmp_path / "slow.txt").exists()
