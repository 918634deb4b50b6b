"""serve() with several replicas (local launcher), the FAKE OpenAI server (test double) as vLLM:
all replicas published, late replicas admitted after serve() returned, impostors never admitted,
every replica dead -> a fast failure with each log tail, teardown stops them all; bad fields."""

from __future__ import annotations

import json
import stat
import time

import pytest
from pydantic import ValidationError

from helpers.replicas import FAKE, fake_replicas
from helpers.serving import alive, wait_until
from longdoc_sdg.endpoints import deployment_settings
from longdoc_sdg.serve import ServeError, build_command, read_replicas, serve, teardown
from longdoc_sdg.serve.procs import http_get, read_json


@pytest.fixture
def paths(tmp_path):
    box = {
        "sentinel": tmp_path / "results" / "pool.sentinel.json",
        "runtime": tmp_path / "results" / "pool.runtime.json",
        "state": tmp_path / "state",
    }
    yield box
    teardown(box["state"])


def _serve(dep, paths, **kwargs):
    # Readiness polled every 0.2 s (1 s in the workflow): the fake replicas are up in a second.
    kwargs.setdefault("poll_s", 0.2)
    return serve(dep, paths["sentinel"], paths["runtime"], launcher="local", state_dir=paths["state"], **kwargs)


def _record(paths):
    return read_json(paths["state"] / "servers" / "pool.json")


def test_every_replica_published_on_its_own_port_and_torn_down(paths):
    dep = fake_replicas(min_ready=2)
    info = _serve(dep, paths)
    runtime = json.loads(paths["runtime"].read_text())
    assert stat.S_IMODE(paths["runtime"].stat().st_mode) == 0o600
    replicas = runtime["replicas"]
    assert [r["index"] for r in sorted(replicas, key=lambda r: r["index"])] == [0, 1]
    assert len({r["port"] for r in replicas}) == 2
    assert sorted(info["replicas"]) == sorted(r["base_url"] for r in replicas)
    for replica in replicas:
        assert http_get(f"{replica['url']}/v1/models", runtime["api_key"])[0] == 200
    assert sorted(r["base_url"] for r in read_replicas(paths["runtime"])) == sorted(r["base_url"] for r in replicas)
    pids = [r["pid"] for r in replicas]
    assert all(alive(p) for p in pids)
    assert teardown(paths["state"]) == ["pool"]
    assert not any(alive(p) for p in pids)
    assert not paths["runtime"].exists() and _record(paths) is None
    assert read_replicas(paths["runtime"]) == []


def test_late_replica_joins_the_runtime_file_after_serve_returned(paths):
    dep = fake_replicas(min_ready=1, extra_args=["--replica-startup-delay", "1=4"])
    _serve(dep, paths)
    first = json.loads(paths["runtime"].read_text())
    assert [r["index"] for r in first["replicas"]] == [0]
    admitter = _record(paths)["admitter"]
    assert alive(admitter["pid"])
    assert wait_until(lambda: len(read_replicas(paths["runtime"])) == 2, 30)
    later = json.loads(paths["runtime"].read_text())
    assert later["api_key"] == first["api_key"] and later["instance"] == first["instance"]
    assert http_get(f"{later['replicas'][1]['url']}/v1/models", later["api_key"])[0] == 200
    # Its work done, the admitter leaves.
    assert wait_until(lambda: not alive(admitter["pid"]), 15)
    pids = [r["pid"] for r in later["replicas"]]
    teardown(paths["state"])
    assert not any(alive(p) for p in pids)


def test_teardown_stops_a_replica_still_starting_and_its_admitter(paths):
    dep = fake_replicas(min_ready=1, extra_args=["--replica-startup-delay", "1=120"])
    _serve(dep, paths)
    record = _record(paths)
    pids = [r["pid"] for r in record["replicas"]] + [record["admitter"]["pid"]]
    assert all(alive(p) for p in pids)
    teardown(paths["state"])
    assert not any(alive(p) for p in pids)
    assert not paths["runtime"].exists()


def test_impostor_replica_is_never_admitted(paths):
    dep = fake_replicas(min_ready=1, extra_args=["--replica-pretend", "1=someone-elses-model"])
    _serve(dep, paths, mismatch_grace_s=1)
    # The admitter gives up on it after the grace; it never enters the runtime file.
    assert wait_until(lambda: _record(paths)["replicas"][1]["state"] == "failed", 30)
    record = _record(paths)
    assert "someone-elses-model" in record["replicas"][1]["error"]
    assert "refusing to publish" in record["replicas"][1]["error"]
    assert [r["index"] for r in json.loads(paths["runtime"].read_text())["replicas"]] == [0]
    assert not alive(record["replicas"][1]["pid"])


def test_impostor_counts_against_min_ready(paths):
    dep = fake_replicas(min_ready=2, extra_args=["--replica-pretend", "0=someone-elses-model"])
    with pytest.raises(ServeError) as caught:
        _serve(dep, paths, mismatch_grace_s=1)
    message = str(caught.value)
    assert "1 of 2 replicas failed" in message and "fewer than min_ready=2" in message
    assert "replica 0: refusing to publish" in message
    assert not paths["runtime"].exists() and not paths["sentinel"].exists()
    assert _record(paths) is None


def test_every_replica_dead_before_ready_fails_fast_with_each_log_tail(paths):
    dep = fake_replicas(min_ready=1, extra_args=["--startup-delay", "1", "--crash-on-start"], ready_timeout_s=600)
    t0 = time.monotonic()
    with pytest.raises(ServeError) as caught:
        _serve(dep, paths)
    elapsed = time.monotonic() - t0
    print(f"both replicas dead, detected in {elapsed:.1f}s")
    # Detection came from the exits, not from waiting out the 600 s ready timeout: each replica's
    # failure names its exit, and a timeout would name the timeout instead.
    message = str(caught.value)
    assert "2 of 2 replicas failed" in message
    for index in (0, 1):
        assert f"replica {index}: the server exited before it was ready" in message
        assert f"replica-{index}/server.log" in message
    assert message.count("engine core failed to start (injected by --crash-on-start)") == 2
    assert not paths["runtime"].exists() and not paths["sentinel"].exists()


def test_replica_fields_validated_with_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match="replicas"):
        fake_replicas(replicas=0)
    with pytest.raises(ValidationError, match=r"min_ready \(3\) exceeds replicas \(2\)"):
        fake_replicas(min_ready=3)
    with pytest.raises(ValidationError, match="min_ready"):
        fake_replicas(min_ready=0)
    # Through the workflow config: the error names the deployment, its file and the override key.
    deployments = tmp_path / "deployments"
    deployments.mkdir()
    (deployments / "pool.yaml").write_text(json.dumps({"model": "m", "serve_command": FAKE}))
    config = {"serving": {"run": {"deployments_dir": str(deployments), "overrides": {"pool": {"replicas": 0}}}}}
    with pytest.raises(ValueError) as caught:
        deployment_settings(config, "pool")
    assert "serving.run.overrides.pool" in str(caught.value) and "replicas:" in str(caught.value)


def test_data_parallel_size_reaches_vllm_and_the_gpu_count():
    dep = fake_replicas(data_parallel_size=2, tensor_parallel_size=2)
    argv = build_command(dep, "127.0.0.1", 8000, None)
    assert argv[argv.index("--data-parallel-size") + 1] == "2"
    assert dep.gpus_per_node == 4
    assert "--data-parallel-size" not in build_command(fake_replicas(), "127.0.0.1", 8000, None)


def test_every_replica_lost_after_ready_names_each_log(paths):
    import os
    import signal

    from longdoc_sdg.serve import EndpointGoneError, verify_endpoint

    dep = fake_replicas(min_ready=2)
    # As in the workflow: the state dir is the runtime file's folder (results/serve).
    paths["state"] = paths["runtime"].parent
    _serve(dep, paths)
    for replica in _record(paths)["replicas"]:
        bound = read_json(replica["bound_path"])
        os.killpg(bound["server_pid"], signal.SIGKILL)
    # The last wrapper to notice unpublishes the deployment.
    assert wait_until(lambda: not paths["runtime"].exists(), 30)
    with pytest.raises(EndpointGoneError) as caught:
        verify_endpoint(paths["runtime"])
    message = str(caught.value)
    assert "server for deployment pool is not running" in message
    for index in (0, 1):
        assert f"replica {index}: Last lines of" in message and f"replica-{index}/server.log" in message
    assert "server exited with code -9" in message
