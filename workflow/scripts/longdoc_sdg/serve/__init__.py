"""Serving models for the workflow: deployments, launch, readiness, publication, teardown.

A serve rule calls `serve(...)`; it starts the serve wrapper (`python -m longdoc_sdg.serve
run`) as a detached local process group or as a Slurm job, waits until `/health` is 200 AND
`/v1/models` lists the served name, then publishes a runtime file (endpoint + API key,
mode 0600) and a sentinel (identity only). Clients call `verify_endpoint(runtime)` and run
inside `keep_alive(runtime)`; `teardown(state_dir)` in onsuccess/onerror stops everything.
"""

from .core import (
    EndpointGoneError,
    ServeError,
    heartbeat_path,
    keep_alive,
    keep_servers_alive,
    read_endpoint,
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
    "keep_alive",
    "keep_servers_alive",
    "load_deployment",
    "read_endpoint",
    "reap_stale",
    "serve",
    "teardown",
    "verify_endpoint",
]
