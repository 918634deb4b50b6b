"""How the workflow reaches models: manual endpoints from config, or deployments it serves.

Thin glue between the Snakemake rules and `longdoc_sdg.serve`; keys are read from environment
variables or the runtime file at job time and never enter params, logs or sentinels."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from .io import get_logger, register_secret

log = get_logger("endpoints")


def deployment_file(config: dict, name: str) -> Path:
    path = Path(config["serving"]["run"]["deployments_dir"]) / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"deployment {name!r}: no file {path}; add it or point serving.run.deployments_dir elsewhere "
            f"(available: {sorted(p.stem for p in path.parent.glob('*.yaml'))})"
        )
    return path


def _deployment(config: dict, name: str):
    from pydantic import ValidationError

    from .serve import load_deployment

    path = deployment_file(config, name)
    try:
        return load_deployment(path, config["serving"]["run"]["overrides"].get(name))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'deployment'}: {error['msg']}" for error in exc.errors()
        )
        raise ValueError(
            f"deployment {name!r} ({path}, with serving.run.overrides.{name}): {problems}; fix the field in the "
            f"deployment file or its override"
        ) from None


def deployment_settings(config: dict, name: str) -> dict[str, Any]:
    """What the serve rule needs: the deployment file and the config's overrides for it."""
    _deployment(config, name)  # fail at parse time on a bad deployment, naming it
    return {
        "file": str(deployment_file(config, name)),
        "overrides": config["serving"]["run"]["overrides"].get(name) or {},
    }


def load_deployment_of(config: dict, name: str):
    """The validated deployment NAME (its file and the config's overrides)."""
    return _deployment(config, name)


def deployment_gpus(config: dict, name: str) -> int:
    """GPUs one server of the deployment takes (for the run summary)."""
    return _deployment(config, name).gpus_per_node


def deployment_context(config: dict, name: str) -> dict[str, Any]:
    """What the client's context budget takes from deployment NAME (engine/budget.py)."""
    from .engine.budget import deployment_hint

    return deployment_hint(_deployment(config, name))


def deployment_identity(config: dict, name: str) -> dict[str, str]:
    """Who a deployment serves (model, served name, hash of answer-changing settings)."""
    from .serve import identity

    return identity(_deployment(config, name))


def serve_launcher(config: dict, profile_launcher: str | None = None, client: bool = False) -> str:
    """serving.run.launcher with 'auto' resolved: what the profile asks for (the serve rule's
    `serve_launcher` resource, set by profiles/slurm), else local; for a client job serving
    for itself (see ensure_served), slurm when that job runs inside Slurm."""
    launcher = config["serving"]["run"]["launcher"]
    if launcher != "auto":
        return launcher
    if profile_launcher:
        if profile_launcher not in ("local", "slurm"):
            raise ValueError(
                f"the profile sets the serve rule's resource serve_launcher={profile_launcher!r}; use local or slurm"
            )
        return profile_launcher
    return "slurm" if client and os.environ.get("SLURM_JOB_ID") else "local"


def serve_deployment(settings: dict, sentinel_path: str, runtime_path: str, launcher: str, state_dir: str):
    from .serve import serve

    result = serve(
        settings["file"],
        sentinel_path,
        runtime_path,
        launcher=launcher,
        state_dir=state_dir,
        overrides=settings["overrides"],
    )
    log.info("deployment %s ready at %s", result.get("deployment"), result.get("base_url"))
    return result


def forget_dead_servers(state_dir: str) -> None:
    """Unpublish servers a killed earlier run left behind, so this run serves them again."""
    from .serve import reap_stale

    reaped = reap_stale(state_dir)
    if reaped:
        print(f"longdoc-sdg: servers of an earlier run are gone, will serve again: {', '.join(reaped)}")


_heartbeat_stop = None


def keep_run_servers_alive(state_dir: str) -> None:
    """While this run lives, keep its servers' idle backstop from firing (clients may queue)."""
    global _heartbeat_stop
    from .serve import keep_servers_alive

    _heartbeat_stop = keep_servers_alive(state_dir)


def stop_servers(state_dir: str) -> None:
    if _heartbeat_stop is not None:
        _heartbeat_stop()
    from .serve import teardown

    stopped = teardown(state_dir)
    if stopped:
        print(f"longdoc-sdg: stopped servers: {', '.join(stopped)}")


def stop_deployment(state_dir: str, name: str) -> None:
    """Stop one deployment as soon as its last client is done: its GPUs go back to the
    cluster instead of idling until the whole run ends."""
    from .serve import teardown

    if teardown(state_dir, only=name):
        print(f"longdoc-sdg: every client of {name} is done; stopped its server")


def endpoint_params(config: dict, stage: str, mode: str, runtime_path: str | None) -> dict:
    """A stage's endpoint params (`mode` from the stage's status): how the job finds its model,
    and the model's identity. Only the identity changes answers, so nothing else goes in: a
    manual endpoint's host, port and key variable are read at job time (resolve_endpoint), a
    served one's from its runtime file."""
    from .plan import model_spec, stage_deployment

    if mode == "manual":
        return {"mode": mode, "model": model_spec(config, stage)["endpoint"]["model"]}
    if mode == "serve":
        return {"mode": mode, "runtime": runtime_path, **deployment_identity(config, stage_deployment(config, stage))}
    return {"mode": mode}


def read_api_key(env_name: str, what: str) -> str:
    """The one place an API key is read: from the environment variable the config names,
    registered with the log redactor so it never reaches a log."""
    key = os.environ.get(env_name)
    if not key:
        raise ValueError(f"{what}: environment variable {env_name} holding its API key is not set; export it")
    register_secret(key, f"the API key in environment variable {env_name}")
    return key


def ensure_served(params: dict, config: dict) -> None:
    """Serve a client's deployment from the client job when this run never started it: a
    forced target (`--force FILE`) has no serve job in its DAG when the sentinel already
    exists. One client serves (under a lock), the others wait for it and find it published;
    end-of-run teardown stops it like any other. A deployment that was started and died is
    left alone: its client fails with the rerun hint instead of restarting it in a loop."""
    import fcntl

    from .serve import serve

    runtime = Path(params["runtime"])
    if runtime.exists():
        return
    name = params["deployment"]
    servers = runtime.parent / "servers"
    servers.mkdir(parents=True, exist_ok=True)
    with open(servers / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runtime.exists() or (servers / f"{name}.json").exists():
            return
        log.info("deployment %s is not running and no serve job of this run started it; serving it here", name)
        settings = deployment_settings(config, name)
        serve(
            settings["file"],
            runtime.parent / f"{name}.sentinel.json",
            runtime,
            launcher=serve_launcher(config, client=True),
            state_dir=runtime.parent,
            overrides=settings["overrides"],
        )


def resolve_endpoint(params: dict, config: dict, stage: str) -> dict | None:
    """The engine endpoint of a job, from its endpoint params (the identity) and the config
    read at job time: a manual model's alias (base URL, key variable); a served deployment
    nobody started yet is served first (ensure_served)."""
    mode = params["mode"]
    if mode == "none":
        return None
    if mode == "manual":
        from .plan import model_alias, model_spec

        spec = model_spec(config, stage)["endpoint"]
        if spec["model"] != params["model"]:
            raise RuntimeError(
                f"models.{model_alias(config, stage)}.endpoint.model is {spec['model']!r} but the job was planned "
                f"for {params['model']!r}; rerun the workflow"
            )
        endpoint = {"base_url": spec["base_url"], "model": spec["model"], "api_key_env": spec.get("api_key_env")}
        if spec.get("max_model_len"):
            # for servers whose /v1/models lists no context length (engine/budget.py)
            endpoint["context"] = {"fallback_max_model_len": spec["max_model_len"]}
        return endpoint
    if mode == "serve":
        from .serve import verify_endpoint

        ensure_served(params, config)

        endpoint = verify_endpoint(params["runtime"])
        if endpoint["model"] != params["served_name"]:
            raise RuntimeError(
                f"runtime file {params['runtime']} serves {endpoint['model']!r}, expected "
                f"{params['served_name']!r}; rerun to serve the configured deployment"
            )
        register_secret(endpoint.get("api_key"))
        # The engine re-reads the replicas from the runtime file (late ones join).
        endpoint.pop("replicas", None)
        endpoint["runtime"] = params["runtime"]
        return endpoint
    raise RuntimeError(f"stage has no reachable model (endpoint mode {mode!r})")


@contextlib.contextmanager
def keep_server_alive(params: dict) -> Iterator[None]:
    """Heartbeat a served deployment while a job uses it (its idle backstop stays off).
    When the job fails because the server went away under it, say so, naming the deployment
    (the engine's own error names only the URL)."""
    if params["mode"] != "serve":
        yield
        return
    from .serve import EndpointGoneError, keep_alive, verify_endpoint

    with keep_alive(params["runtime"]):
        try:
            yield
        except Exception as exc:
            try:
                verify_endpoint(params["runtime"], timeout_s=5.0)
            except EndpointGoneError as gone:
                raise EndpointGoneError(f"{gone}. It went away during this job, which failed with: {exc}") from exc
            raise
