"""Serving models for the workflow: deployments, launch, readiness, publication, teardown.

A serve rule calls `serve(...)`; it starts one serve wrapper (`python -m longdoc_sdg.serve
run`) per replica, each a detached local process group or a Slurm job, waits until `min_ready`
of them answer `/health` with 200 AND list the served name in `/v1/models`, then publishes a
runtime file (ready replicas + API key, mode 0600) and a sentinel (identity only); a detached
admitter adds the later replicas to the runtime file as they become ready. Clients call
`verify_endpoint(runtime)`, re-read `read_replicas(runtime)` and run inside
`keep_alive(runtime)`; `teardown(state_dir)` in onsuccess/onerror stops everything.
"""

from .core import (
    EndpointGoneError,
    ServeError,
    heartbeat_path,
    keep_alive,
    keep_servers_alive,
    read_endpoint,
    read_replicas,
    reap_stale,
    serve,
    teardown,
    verify_endpoint,
)
from .deployment import (
    Deployment,
    as_deployment,
    build_command,
    config_hash,
    deployment_from_dict,
    identity,
    image_limit,
    load_deployment,
)
from .launchers import LaunchError

__all__ = [
    "Deployment",
    "EndpointGoneError",
    "LaunchError",
    "ServeError",
    "as_deployment",
    "build_command",
    "config_hash",
    "deployment_from_dict",
    "heartbeat_path",
    "identity",
    "image_limit",
    "keep_alive",
    "keep_servers_alive",
    "load_deployment",
    "read_endpoint",
    "read_replicas",
    "reap_stale",
    "serve",
    "teardown",
    "verify_endpoint",
]
