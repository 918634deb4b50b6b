"""The real CPU vLLM (tests/vllm/install.sh) served through serve(): the tiny-cpu-vlm
deployment with the tiny random-weight model, local launcher and (with Slurm) sbatch."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.serving import REPO, VLLM_VENV, cmdlines_containing, require, slurm_available, vllm_python
from longdoc_sdg.serve import load_deployment, serve, teardown, verify_endpoint
from longdoc_sdg.serve.procs import group_alive, http_get, read_json

pytestmark = pytest.mark.vllm

DEPLOYMENT = REPO / "config" / "deployments" / "tiny-cpu-vlm.yaml"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    require(
        vllm_python().exists() and (VLLM_VENV / ".longdoc-vllm-stamp").exists(),
        f"no CPU vLLM venv at {VLLM_VENV} (bash tests/vllm/install.sh)",
    )
    out = tmp_path_factory.mktemp("tiny") / "tiny-vlm"
    subprocess.run(
        [str(vllm_python()), str(REPO / "tests" / "vllm" / "build_tiny_vlm.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def _chat(runtime: dict, api_key: str | None) -> tuple[int, dict]:
    body = json.dumps(
        {
            "model": runtime["model"],
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": 8,
            "temperature": 0,
        }
    ).encode()
    request = urllib.request.Request(f"{runtime['base_url']}/chat/completions", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _check_served(paths: dict, info: dict) -> dict:
    runtime = json.loads(paths["runtime"].read_text())
    key = runtime["api_key"]
    assert verify_endpoint(paths["runtime"])["model"] == "tiny-vlm"
    status, reply = _chat(runtime, key)
    assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"
    assert _chat(runtime, None)[0] == 401
    assert _chat(runtime, "wrong-key")[0] == 401
    assert cmdlines_containing(key) == []
    assert key not in Path(runtime["server_log"]).read_text(errors="replace")
    assert key not in paths["sentinel"].read_text()
    return runtime


def test_real_vllm_local(tmp_path, tiny_model):
    dep = load_deployment(DEPLOYMENT, {"model": str(tiny_model)})
    paths = {"sentinel": tmp_path / "s.json", "runtime": tmp_path / "r.json", "state": tmp_path / "state"}
    try:
        t0 = time.monotonic()
        info = serve(dep, paths["sentinel"], paths["runtime"], launcher="local", state_dir=paths["state"])
        print(f"real vLLM (local) ready in {time.monotonic() - t0:.1f}s")
        runtime = _check_served(paths, info)
        server_pgid = read_json(paths["state"] / "servers" / "tiny-cpu-vlm" / "replica-0" / "bound.json")["server_pid"]
        assert group_alive(server_pgid)
    finally:
        t0 = time.monotonic()
        teardown(paths["state"])
        print(f"real vLLM (local) teardown in {time.monotonic() - t0:.1f}s")
    # vLLM's engine core shares the server's group: nothing of it may survive.
    assert not group_alive(server_pgid)
    assert http_get(f"{runtime['url']}/health", timeout=2)[0] == 0
    assert not paths["runtime"].exists() and paths["sentinel"].exists()


@pytest.mark.slurm
def test_real_vllm_slurm(tmp_path, tiny_model):
    require(slurm_available(), "no usable Slurm (sinfo missing or failing); run ci/slurm/up.sh")
    dep = load_deployment(DEPLOYMENT, {"model": str(tiny_model)})
    paths = {"sentinel": tmp_path / "s.json", "runtime": tmp_path / "r.json", "state": tmp_path / "state"}
    try:
        t0 = time.monotonic()
        info = serve(dep, paths["sentinel"], paths["runtime"], launcher="slurm", state_dir=paths["state"])
        print(f"real vLLM (slurm job {info['job_id']}) ready in {time.monotonic() - t0:.1f}s")
        runtime = _check_served(paths, info)
        submit = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", info["job_id"], "-o", "Partition,SubmitLine"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert submit.startswith("gpu|") and runtime["api_key"] not in submit
    finally:
        t0 = time.monotonic()
        teardown(paths["state"])
        print(f"real vLLM (slurm) teardown in {time.monotonic() - t0:.1f}s")
    queued = subprocess.run(
        ["squeue", "-h", "-j", info["job_id"], "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    assert queued.stdout.strip() == ""
    assert http_get(f"{runtime['url']}/health", timeout=2)[0] == 0
