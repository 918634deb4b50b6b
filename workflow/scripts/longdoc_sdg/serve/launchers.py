"""Where the serve wrapper runs: a detached local process group, or a Slurm batch job."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .deployment import Deployment
from .procs import group_alive, is_same_process, proc_start_time, read_json, signal_group, stop_group

# Job states in which the wrapper has not started yet / is running; anything else is over.
SLURM_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED"}
SLURM_RUNNING = {"RUNNING"}
PENDING, RUNNING, DEAD = "pending", "running", "dead"


class LaunchError(RuntimeError):
    pass


def wrapper_argv(spec_path: str | Path) -> list[str]:
    return [sys.executable, "-m", "longdoc_sdg.serve", "run", "--spec", str(spec_path)]


def wrapper_env(extra_pythonpath: str) -> dict[str, str]:
    """Our environment, with the package importable (no `pip install -e .` needed) and no
    key of an outer server leaking into ours."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    paths = [extra_pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LocalLauncher:
    name = "local"
    bind_host = "127.0.0.1"

    def __init__(self) -> None:
        # Popen objects of wrappers started by this process: polling them reaps zombies.
        self._children: dict[int, subprocess.Popen] = {}

    def advertise_host(self) -> str | None:
        return "127.0.0.1"

    def start(self, dep: Deployment, spec_path: Path, server_log: Path, env: dict[str, str]) -> dict[str, Any]:
        with open(server_log, "ab") as log:
            # Own session: Ctrl-C in the terminal or the end of the Snakemake job leaves it
            # alone; no inherited pipes, so nobody waits for it to close them.
            proc = subprocess.Popen(
                wrapper_argv(spec_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
                cwd=spec_path.parent,
            )
        self._children[proc.pid] = proc
        return {"pid": proc.pid, "pgid": proc.pid, "start_time": proc_start_time(proc.pid)}

    def state(self, record: dict[str, Any]) -> tuple[str, str]:
        pid = record["pid"]
        proc = self._children.get(pid)
        if proc is not None:
            code = proc.poll()
            if code is not None:
                return DEAD, f"wrapper pid {pid} exited with code {code}"
            return RUNNING, f"pid {pid}"
        if is_same_process(pid, record.get("start_time")):
            return RUNNING, f"pid {pid}"
        return DEAD, f"wrapper pid {pid} is gone"

    def stop(self, record: dict[str, Any], grace_s: float) -> None:
        pid = record["pid"]
        bound = read_json(record["bound_path"]) or {}
        if is_same_process(pid, record.get("start_time")):
            # The wrapper forwards SIGTERM to the server's group and waits `grace_s`.
            stop_group(record["pgid"], grace_s=grace_s + 5.0)
        # The server's own group, in case the wrapper died without clearing it.
        server_pid = bound.get("server_pid")
        if server_pid and bound.get("instance") == record.get("instance"):
            if proc_start_time(server_pid) is None or is_same_process(server_pid, bound.get("server_start_time")):
                if group_alive(server_pid):
                    stop_group(server_pid, grace_s=grace_s)
        proc = self._children.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                signal_group(record["pgid"], signal.SIGKILL)


def _run(argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


class SlurmLauncher:
    name = "slurm"
    # Clients run on other nodes: listen on all interfaces, advertise the node's name.
    bind_host = "0.0.0.0"

    def advertise_host(self) -> str | None:
        return None

    def sbatch_argv(self, dep: Deployment, spec_path: Path, server_log: Path) -> list[str]:
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name=longdoc-serve-{dep.name}",
            f"--time={dep.walltime}",
            f"--nodes={dep.nodes}",
            "--ntasks=1",
            f"--cpus-per-task={dep.cpus}",
            f"--output={server_log}",
            "--open-mode=append",
            f"--chdir={spec_path.parent}",
            # The wrapper consumes the one-use key file: a requeued job could not start.
            "--no-requeue",
        ]
        if dep.partition:
            argv.append(f"--partition={dep.partition}")
        if dep.mem_mb:
            argv.append(f"--mem={dep.mem_mb}")
        if dep.gpus_per_node:
            argv.append(f"--gres=gpu:{dep.gpus_per_node}")
        argv += list(dep.slurm_extra)
        argv += ["--wrap", "exec " + shlex.join(wrapper_argv(spec_path))]
        return argv

    def start(self, dep: Deployment, spec_path: Path, server_log: Path, env: dict[str, str]) -> dict[str, Any]:
        argv = self.sbatch_argv(dep, spec_path, server_log)
        # A serve() inside a Slurm job must not hand its own job's settings to the new job.
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
        result = _run(argv, env=env)
        if result.returncode != 0:
            raise LaunchError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise LaunchError(f"sbatch printed no job id: {result.stdout.strip()!r}")
        return {"job_id": job_id}

    @staticmethod
    def job_state(job_id: str) -> str | None:
        """The job's state per squeue; "" once Slurm no longer lists it; None if squeue failed."""
        result = _run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], timeout=30)
        if result.returncode != 0:
            # Purged from the controller's memory: the job is long over.
            if "Invalid job id" in result.stderr:
                return ""
            return None
        return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""

    @staticmethod
    def accounting(job_id: str) -> str:
        result = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Reason"], timeout=30)
        return result.stdout.strip().replace("|", " ") if result.returncode == 0 else ""

    def state(self, record: dict[str, Any]) -> tuple[str, str]:
        job_id = record["job_id"]
        state = self.job_state(job_id)
        if state is None:
            return RUNNING, f"job {job_id} (squeue unavailable)"
        if state in SLURM_PENDING:
            return PENDING, f"job {job_id} {state}"
        if state in SLURM_RUNNING:
            return RUNNING, f"job {job_id} RUNNING"
        detail = self.accounting(job_id) or state or "no longer listed"
        return DEAD, f"Slurm job {job_id} ended: {detail}"

    def stop(self, record: dict[str, Any], grace_s: float, wait_s: float = 180.0) -> None:
        job_id = record["job_id"]
        _run(["scancel", job_id], timeout=30)
        # Done when squeue no longer lists it in any active state (incl. COMPLETING).
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            result = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], timeout=30)
            if result.returncode == 0 and not result.stdout.strip():
                return
            if result.returncode != 0 and "Invalid job id" in result.stderr:
                return
            time.sleep(0.5)
        raise LaunchError(f"Slurm job {job_id} still listed by squeue {wait_s:.0f}s after scancel")


def get_launcher(name: str) -> LocalLauncher | SlurmLauncher:
    if name == "local":
        return LocalLauncher()
    if name == "slurm":
        return SlurmLauncher()
    raise ValueError(f"unknown launcher {name!r} (local or slurm)")
