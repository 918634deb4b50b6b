"""serve() / teardown() with the local launcher and the fake OpenAI server as "vLLM"."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.serving import alive, cmdlines_containing, fake_deployment, files_containing, wait_until
from longdoc_sdg.io import setup_job_logging
from longdoc_sdg.serve import (
    EndpointGoneError,
    ServeError,
    identity,
    keep_alive,
    keep_servers_alive,
    read_endpoint,
    reap_stale,
    serve,
    teardown,
    verify_endpoint,
)
from longdoc_sdg.serve.procs import http_get, read_json


@pytest.fixture
def paths(tmp_path):
    """Sentinel, runtime file and state dir of one deployment; teardown always runs."""
    state = tmp_path / "state"
    box = {
        "sentinel": tmp_path / "results" / "fake.sentinel.json",
        "runtime": tmp_path / "results" / "fake.runtime.json",
        "state": state,
    }
    yield box
    teardown(state)


def _serve(dep, paths, **kwargs):
    # Readiness polled every 0.2 s (1 s in the workflow): the fake server is up in a second.
    kwargs.setdefault("poll_s", 0.2)
    return serve(dep, paths["sentinel"], paths["runtime"], launcher="local", state_dir=paths["state"], **kwargs)


def _record(paths, name="fake"):
    return read_json(paths["state"] / "servers" / f"{name}.json")


def _replica(paths, index=0, name="fake"):
    return _record(paths, name)["replicas"][index]


def test_ready_publishes_identity_only_and_private_runtime(tmp_path, paths):
    job_log = tmp_path / "serve-job.log"
    stderr = sys.stderr
    setup_job_logging(job_log)
    try:
        dep = fake_deployment(tmp_path, shim_args="--delay 1")
        t0 = time.monotonic()
        info = _serve(dep, paths)
        ready_s = time.monotonic() - t0
    finally:
        # setup_job_logging points stderr at the job log: give pytest its stderr back.
        sys.stderr = stderr
        logger = logging.getLogger("longdoc_sdg")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
    assert "ready at" in job_log.read_text()
    print(f"fake server ready in {ready_s:.2f}s")

    sentinel = json.loads(paths["sentinel"].read_text())
    assert sentinel == identity(dep)
    assert set(sentinel) == {"deployment", "model", "served_name", "config_hash"}

    runtime_file = paths["runtime"]
    assert stat.S_IMODE(runtime_file.stat().st_mode) == 0o600
    runtime = json.loads(runtime_file.read_text())
    key = runtime["api_key"]
    assert len(key) >= 32
    for secretish in (key, str(runtime["port"]), runtime["base_url"], str(runtime["pid"])):
        assert secretish not in paths["sentinel"].read_text()
    assert info["base_url"] == runtime["base_url"] and "api_key" not in info

    endpoint = read_endpoint(runtime_file)
    assert endpoint == {
        "base_url": runtime["base_url"],
        "model": "fake-served",
        "api_key": key,
        "replicas": [
            {
                "base_url": runtime["base_url"],
                "capacity": None,
                "server_log": runtime["server_log"],
                "name": "replica 0",
            }
        ],
    }
    assert verify_endpoint(runtime_file) == endpoint
    # The server really holds the key: without it, /v1/models is refused.
    assert http_get(f"{runtime['url']}/v1/models")[0] == 401
    assert http_get(f"{runtime['url']}/v1/models", key)[0] == 200

    # Never on a command line (ps), in a log, or in a state file other than the runtime file.
    assert cmdlines_containing(key) == []
    assert files_containing(tmp_path, key) == [runtime_file]
    assert key not in job_log.read_text()
    assert not Path(_replica(paths)["key_path"]).exists()

    pid = runtime["pid"]
    assert alive(pid)
    t0 = time.monotonic()
    assert teardown(paths["state"]) == ["fake"]
    print(f"teardown in {time.monotonic() - t0:.2f}s")
    assert not alive(pid)
    # Unpublished: the runtime file goes; the sentinel (identity only) stays for the workflow.
    assert not runtime_file.exists() and json.loads(paths["sentinel"].read_text()) == identity(dep)
    assert teardown(paths["state"]) == []  # idempotent


def test_crash_before_ready_fails_fast_with_log_tail(tmp_path, paths):
    dep = fake_deployment(tmp_path, shim_args="--crash-after 1", ready_timeout_s=600)
    with pytest.raises(ServeError) as caught:
        _serve(dep, paths)
    message = str(caught.value)
    # Noticed as an exit, not by waiting out the 600 s ready timeout.
    assert "exited before it was ready" in message
    assert "CUDA out of memory (simulated by the shim)" in message
    assert not paths["sentinel"].exists() and not paths["runtime"].exists()
    assert _record(paths) is None


def test_impostor_listing_another_model_is_never_published(tmp_path, paths):
    dep = fake_deployment(tmp_path, shim_args="--pretend somebody-elses-model")
    t0 = time.monotonic()
    with pytest.raises(ServeError) as caught:
        _serve(dep, paths, mismatch_grace_s=1.5)
    print(f"impostor refused in {time.monotonic() - t0:.2f}s")
    assert "refusing to publish" in str(caught.value)
    assert "somebody-elses-model" in str(caught.value)
    assert not paths["sentinel"].exists() and not paths["runtime"].exists()
    assert _record(paths) is None


def test_impostor_until_ready_timeout(tmp_path, paths):
    dep = fake_deployment(tmp_path, shim_args="--pretend other", ready_timeout_s=3)
    with pytest.raises(ServeError) as caught:
        _serve(dep, paths, mismatch_grace_s=600)
    assert "not ready within ready_timeout_s=3s" in str(caught.value)
    assert "'other'" in str(caught.value)
    assert not paths["sentinel"].exists()


def test_port_owned_by_another_server_fails(tmp_path, paths):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    other = subprocess.Popen(
        [sys.executable, "-m", "longdoc_sdg.testing.fake_openai_server", "--port", str(port), "--model", "other"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 30)
        dep = fake_deployment(tmp_path, port=port)
        with pytest.raises(ServeError) as caught:
            _serve(dep, paths, mismatch_grace_s=20)
        # Our server cannot bind and dies, or the impostor is recognised: never published.
        assert "exited before it was ready" in str(caught.value) or "refusing to publish" in str(caught.value)
        assert not paths["sentinel"].exists()
    finally:
        other.terminate()
        other.wait(10)


def test_teardown_kills_the_whole_group_even_if_sigterm_is_ignored(tmp_path, paths):
    pid_file = tmp_path / "pids"
    dep = fake_deployment(tmp_path, shim_args=f"--spawn-worker --ignore-term --pids {pid_file}", stop_grace_s=1)
    _serve(dep, paths)
    wrapper_pid = json.loads(paths["runtime"].read_text())["pid"]
    pids = [wrapper_pid] + [int(p) for p in pid_file.read_text().split()]
    assert all(alive(p) for p in pids) and len(pids) == 3
    t0 = time.monotonic()
    teardown(paths["state"])
    print(f"teardown (SIGKILL path) in {time.monotonic() - t0:.2f}s")
    assert [p for p in pids if alive(p)] == []
    assert not paths["runtime"].exists()


def test_idle_timeout_stops_server_and_unpublishes(tmp_path, paths):
    dep = fake_deployment(tmp_path, idle_timeout_s=1.5)
    _serve(dep, paths)
    runtime = json.loads(paths["runtime"].read_text())
    # A client keeping it alive: past two idle periods it still runs.
    with keep_alive(paths["runtime"], interval_s=0.3):
        time.sleep(3.5)
        verify_endpoint(paths["runtime"])
    # So does the run-wide heartbeat of the Snakemake main process.
    stop = keep_servers_alive(paths["state"], interval_s=0.3)
    time.sleep(3.5)
    stop()
    verify_endpoint(paths["runtime"])
    t0 = time.monotonic()
    assert wait_until(lambda: not alive(runtime["pid"]), 20)
    print(f"idle stop after {time.monotonic() - t0:.2f}s (idle_timeout_s=1.5)")
    assert not paths["runtime"].exists() and paths["sentinel"].exists()
    with pytest.raises(EndpointGoneError, match="rerun — the serve rule will start it again"):
        verify_endpoint(paths["runtime"])
    log_text = Path(runtime["server_log"]).read_text()
    assert "idle for" in log_text


def test_killed_server_gives_clear_client_error_and_is_reaped(tmp_path, paths):
    dep = fake_deployment(tmp_path)
    _serve(dep, paths)
    runtime = json.loads(paths["runtime"].read_text())
    bound = read_json(_replica(paths)["bound_path"])
    # Like a lost node: wrapper and server die at once, nobody unpublishes.
    os.killpg(runtime["pid"], signal.SIGKILL)
    os.killpg(bound["server_pid"], signal.SIGKILL)
    assert wait_until(lambda: not alive(bound["server_pid"]), 10)
    with pytest.raises(EndpointGoneError) as caught:
        verify_endpoint(paths["runtime"])
    message = str(caught.value)
    assert f"server for deployment fake at {runtime['base_url']} is gone" in message
    assert "rerun — the serve rule will start it again" in message
    assert runtime["api_key"] not in message
    # The next run's parse step unpublishes it, so the DAG serves again.
    assert wait_until(lambda: not alive(runtime["pid"]), 10)
    assert reap_stale(paths["state"]) == ["fake"]
    assert not paths["runtime"].exists() and paths["sentinel"].exists()


def test_serving_again_replaces_the_previous_server(tmp_path, paths):
    dep = fake_deployment(tmp_path)
    _serve(dep, paths)
    first = json.loads(paths["runtime"].read_text())
    _serve(dep, paths)
    second = json.loads(paths["runtime"].read_text())
    assert not alive(first["pid"]) and alive(second["pid"])
    assert first["api_key"] != second["api_key"]
    verify_endpoint(paths["runtime"])


def test_cli_serve_and_teardown(tmp_path):
    dep = fake_deployment(tmp_path, name="clitest")
    dep_file = tmp_path / "clitest.yaml"
    dep_file.write_text(json.dumps(dep.model_dump(mode="json")))
    sentinel, runtime, state = tmp_path / "s.json", tmp_path / "r.json", tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "workflow" / "scripts")}
    base = [sys.executable, "-m", "longdoc_sdg.serve"]
    try:
        result = subprocess.run(
            base
            + [
                "serve",
                str(dep_file),
                "--sentinel",
                str(sentinel),
                "--runtime",
                str(runtime),
                "--state-dir",
                str(state),
                "--set",
                "stop_grace_s=1",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        key = json.loads(runtime.read_text())["api_key"]
        assert key not in result.stdout + result.stderr
        check = subprocess.run(base + ["verify", str(runtime)], capture_output=True, text=True, timeout=30, env=env)
        assert check.returncode == 0 and key not in check.stdout
    finally:
        stop = subprocess.run(
            base + ["teardown", "--state-dir", str(state)], capture_output=True, text=True, timeout=60, env=env
        )
    assert json.loads(stop.stdout) == ["clitest"]
    assert not runtime.exists() and sentinel.exists()


def test_sigterm_while_waiting_stops_the_half_started_server(tmp_path):
    """Snakemake cancels a serve job with SIGTERM: the server it started must not linger."""
    dep = fake_deployment(tmp_path, name="slowload", shim_args="--delay 60")
    dep_file = tmp_path / "slowload.yaml"
    dep_file.write_text(json.dumps(dep.model_dump(mode="json")))
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "workflow" / "scripts")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "longdoc_sdg.serve",
            "serve",
            str(dep_file),
            "--sentinel",
            str(tmp_path / "s"),
            "--runtime",
            str(tmp_path / "r"),
            "--state-dir",
            str(state),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    record_path = state / "servers" / "slowload.json"
    try:
        assert wait_until(lambda: (read_json(record_path) or {}).get("replicas"), 30)
        wrapper_pid = read_json(record_path)["replicas"][0]["pid"]
        bound_path = state / "servers" / "slowload" / "replica-0" / "bound.json"
        assert wait_until(bound_path.exists, 30)
        server_pid = read_json(bound_path)["server_pid"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        teardown(state)
    assert proc.returncode != 0 and "SIGTERM" in proc.stderr.read()
    assert not alive(wrapper_pid) and not alive(server_pid)
    assert not record_path.exists()


class _Metrics(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        if self.path != "/metrics" or not self.body:
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_metrics_tell_a_busy_server_from_an_idle_one():
    from longdoc_sdg.serve.wrapper import _metrics_busy

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _Metrics.body = b'# HELP vllm:num_requests_running x\nvllm:num_requests_running{model_name="m"} 0.0\nvllm:num_requests_waiting{model_name="m"} 0.0\n'
        assert _metrics_busy(url) is False
        _Metrics.body = (
            b'vllm:num_requests_running{model_name="m"} 0.0\nvllm:num_requests_waiting{model_name="m"} 3.0\n'
        )
        assert _metrics_busy(url) is True
        _Metrics.body = b""
        assert _metrics_busy(url) is None
    finally:
        server.shutdown()
