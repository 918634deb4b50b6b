"""Shared helpers of the test_serve_* modules (no tests here).

The stand-in "vLLM" is the project's fake OpenAI server behind a small shim that accepts
the vLLM flags the serve wrapper adds and can misbehave on request (crash, impostor,
ignore SIGTERM, spawn a worker in its process group).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longdoc_sdg.serve import Deployment
from longdoc_sdg.serve.procs import proc_start_time

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("LONGDOC_VLLM_VENV", REPO / ".venv-vllm"))

SHIM = r"""
import argparse, os, signal, subprocess, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", default="0")
parser.add_argument("--served-model-name", action="append", default=[])
parser.add_argument("--pretend", help="list this model instead of ours (an impostor)")
parser.add_argument("--crash-after", type=float, help="die with a made-up error after N s")
parser.add_argument("--delay", type=float, default=0.0, help="load time before serving")
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--spawn-worker", action="store_true", help="a child in our group, like vLLM's engine core")
parser.add_argument("--pids", help="write our pid and the worker's here")
args, _vllm_flags = parser.parse_known_args()

print("shim: loading weights (not really)", flush=True)
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
pids = [os.getpid()]
if args.spawn_worker:
    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"])
    pids.append(worker.pid)
if args.pids:
    with open(args.pids, "w") as handle:
        handle.write(" ".join(map(str, pids)))
if args.crash_after is not None:
    time.sleep(args.crash_after)
    print("RuntimeError: CUDA out of memory (simulated by the shim)", flush=True)
    sys.exit(3)
time.sleep(args.delay)
names = [args.pretend] if args.pretend else args.served_model_name
from longdoc_sdg.testing.fake_openai_server import main
argv = ["--host", args.host, "--port", args.port, "--api-key-env", "VLLM_API_KEY"]
for name in names:
    argv += ["--model", name]
main(argv)
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(ok: bool, why: str) -> None:
    """Skip a test whose infrastructure is missing, but fail it under CI=true."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


def slurm_available() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def vllm_python() -> Path:
    return VLLM_VENV / "bin" / "python"


def write_shim(directory: Path) -> Path:
    path = directory / "vllm_shim.py"
    path.write_text(SHIM)
    return path


def fake_deployment(directory: Path, name: str = "fake", shim_args: str = "", **fields) -> Deployment:
    shim = write_shim(directory)
    settings = {
        "name": name,
        "model": "fake/model-for-tests",
        "served_model_name": f"{name}-served",
        "serve_command": f"{{python}} {shim} {shim_args}".strip(),
        "ready_timeout_s": 60,
        "idle_timeout_s": None,
        "stop_grace_s": 3,
        "walltime": 10,
        "mem_mb": 500,
        "cpus": 1,
        "gpus": 1,
        "partition": "gpu",
    }
    settings.update(fields)
    return Deployment.model_validate(settings)


def alive(pid: int) -> bool:
    return proc_start_time(pid) is not None


def wait_until(predicate, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def cmdlines_containing(text: str) -> list[int]:
    """Pids whose command line holds `text` (what `ps` would show anyone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def files_containing(root: Path, text: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if text.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def python_exe() -> str:
    return sys.executable
