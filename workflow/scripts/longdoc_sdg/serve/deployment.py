"""One served model: its validated settings, its identity, and the command that starts it."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Placeholders a serve_command template may use.
TEMPLATE_KEYS = ("model", "python", "image", "served_model_name")


def _identity(default: Any, description: str, **kwargs) -> Any:
    """A field whose value changes what the server answers (part of the config hash)."""
    return Field(default, description=description, json_schema_extra={"identity": True}, **kwargs)


class Deployment(BaseModel):
    """Settings of one vLLM deployment (config/deployments/NAME.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(
        ...,
        description="Deployment name; names the sentinel, runtime file and Slurm job.",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    model: str = _identity(
        ...,
        description="Hugging Face handle or local model folder passed to vLLM. A relative "
        "path starting with ./ or ../ is resolved against the deployment file's folder.",
    )
    served_model_name: str | None = _identity(
        None, description="Name clients request (--served-model-name); null = the deployment name."
    )
    image: str | None = Field(
        None, description="Container image, substituted for {image} in serve_command; null = none."
    )
    python: str | None = Field(
        None,
        description="Interpreter substituted for {python} in serve_command; null = the "
        "interpreter running the serve wrapper. Relative ./ ../ paths resolve like model.",
    )
    serve_command: str = Field(
        "vllm serve {model}",
        description="Command template that starts the server, before the flags we add "
        "(--host, --port, --served-model-name and the settings below). Placeholders: "
        "{model}, {python}, {image}, {served_model_name}. The CPU build of vLLM needs "
        "'{python} -m vllm.entrypoints.openai.api_server --model {model}'.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="--tensor-parallel-size (GPUs per model replica).")
    pipeline_parallel_size: int = Field(1, ge=1, description="--pipeline-parallel-size.")
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="--data-parallel-size: vLLM's own copies of the model inside one server (one "
        "node); GPUs per server = tensor x pipeline x data parallel size.",
    )
    replicas: int = Field(
        1,
        ge=1,
        description="Servers started for this deployment, each its own process group or Slurm job "
        "on its own port; clients spread their requests over the ready ones.",
    )
    min_ready: int = Field(
        1,
        ge=1,
        description="Replicas that must be ready before clients start (at most replicas); the "
        "others join running clients as soon as they are ready.",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="--gpu-memory-utilization; null = vLLM's default (0.9)."
    )
    max_model_len: int | None = _identity(
        None, description="--max-model-len (context length); null = the model's own.", ge=1
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="--max-num-seqs (concurrent sequences; clients should match it)."
    )
    trust_remote_code: bool = _identity(False, description="Pass --trust-remote-code.")
    reasoning_parser: str | None = _identity(
        None, description="--reasoning-parser (e.g. openai_gptoss, deepseek_r1, qwen3); null = none."
    )
    chat_template: str | None = _identity(
        None,
        description="Inline Jinja chat template; written to a file passed with --chat-template. "
        "null = the model's own template.",
    )
    extra_args: list[str] = _identity(
        [], description="Further vLLM arguments, one token per item (e.g. ['--dtype', 'bfloat16'])."
    )
    env_vars: dict[str, str] = Field(
        {}, description="Environment variables for the server process (values are never logged)."
    )
    pre_cmd: str | None = Field(
        None,
        description="Shell code run (bash, set -e) before the server in the same shell, "
        "e.g. 'module load cuda'; null = none.",
    )
    gpus: int | None = Field(
        None, ge=0, description="GPUs per node requested from Slurm; null = tensor x pipeline parallel size."
    )
    nodes: int = Field(1, ge=1, description="Slurm nodes (more than 1 needs a Ray-aware serve_command).")
    walltime: int = Field(720, ge=1, description="Slurm time limit in minutes (the last backstop).")
    partition: str | None = Field("gpu", description="Slurm partition of the serve job; null = the cluster default.")
    mem_mb: int | None = Field(None, ge=1, description="Slurm --mem in MB; null = the partition default.")
    cpus: int = Field(8, ge=1, description="Slurm --cpus-per-task of the serve job.")
    slurm_extra: list[str] = Field([], description="Further sbatch arguments, e.g. ['--account=proj', '--qos=high'].")
    port: int | None = Field(
        None, ge=1, le=65535, description="Fixed port; null = a free port chosen on the server's node."
    )
    ready_timeout_s: float = Field(1800, gt=0, description="Seconds from process start until the model must be served.")
    queue_timeout_s: float | None = Field(
        None, gt=0, description="Seconds a Slurm serve job may stay pending; null = no limit."
    )
    idle_timeout_s: float | None = Field(
        3600,
        gt=0,
        description="The wrapper stops the server after this many seconds with neither a client "
        "heartbeat nor a running/waiting request; null = never (walltime still applies).",
    )
    stop_grace_s: float = Field(30, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping the server.")

    @field_validator("env_vars", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        # YAML turns 1 into an int; environment values are always strings.
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value

    @field_validator("serve_command")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            tokens = shlex.split(value)
            for token in tokens:
                token.format(**{k: "" for k in TEMPLATE_KEYS})
            if not tokens:
                raise ValueError("empty command")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"serve_command {value!r}: bad or unknown placeholder ({exc}); "
                f"allowed: {', '.join('{' + k + '}' for k in TEMPLATE_KEYS)}"
            ) from None
        return value

    @model_validator(mode="after")
    def _image_needed(self) -> "Deployment":
        if "{image}" in self.serve_command and not self.image:
            raise ValueError("serve_command uses {image} but image is not set")
        return self

    @model_validator(mode="after")
    def _min_ready_within_replicas(self) -> "Deployment":
        if self.min_ready > self.replicas:
            raise ValueError(
                f"min_ready ({self.min_ready}) exceeds replicas ({self.replicas}): clients would wait "
                f"for replicas that are never started; set min_ready to at most {self.replicas}"
            )
        return self

    @model_validator(mode="after")
    def _readable_image_limit(self) -> "Deployment":
        image_limit(self)  # a malformed --limit-mm-per-prompt fails when the file is read
        return self

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.name

    @property
    def gpus_per_node(self) -> int:
        if self.gpus is not None:
            return self.gpus
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size


LIMIT_MM_FLAG = "--limit-mm-per-prompt"


def image_limit(dep: Deployment) -> int | None:
    """Images one request may carry on this deployment: the `image` entry of vLLM's
    --limit-mm-per-prompt in extra_args (JSON '{"image": N}', or the older 'image=N,video=M'),
    the last one given winning; None when the deployment sets none (vLLM's V1 engine then
    allows many). The one place that reads it: the stages and `evaluate` size requests by it."""
    args, value = list(dep.extra_args), None
    for i, arg in enumerate(args):
        if arg == LIMIT_MM_FLAG:
            if i + 1 >= len(args):
                raise ValueError(f"deployment {dep.name!r}: extra_args ends with {LIMIT_MM_FLAG} without its value")
            value = args[i + 1]
        elif arg.startswith(LIMIT_MM_FLAG + "="):
            value = arg.split("=", 1)[1]
    if value is None:
        return None
    try:
        if value.lstrip().startswith("{"):
            limits = json.loads(value)
        else:  # image=N,video=M
            limits = {k.strip(): v for k, _, v in (item.partition("=") for item in value.split(",") if item.strip())}
        limit = limits.get("image")
        if limit is None:
            return None
        # newer vLLM also takes {"image": {"count": N, "width": ..., "height": ...}}
        limit = int(limit["count"] if isinstance(limit, dict) else limit)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ValueError(
            f"deployment {dep.name!r}: cannot read {LIMIT_MM_FLAG} {value!r} in extra_args; write it as "
            """'{"image": N}'"""
        ) from None
    if limit < 0:
        raise ValueError(f"deployment {dep.name!r}: {LIMIT_MM_FLAG} allows {limit} images; use 0 or more")
    return limit


def _resolve_relative(value: Any, base: Path) -> Any:
    # Only explicit ./ and ../ paths: a HF handle like org/model must stay untouched.
    if isinstance(value, str) and (value.startswith("./") or value.startswith("../")):
        # normpath, not resolve(): a venv's python is a symlink that must stay unresolved.
        return os.path.normpath(os.path.join(os.path.abspath(base), value))
    return value


def load_deployment(path: str | Path, overrides: dict[str, Any] | None = None) -> Deployment:
    """Read and validate a deployment file; `overrides` replace top-level keys
    (env_vars are merged key by key)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a deployment file must hold a mapping")
    data.setdefault("name", path.stem)
    return deployment_from_dict(data, overrides, base_dir=path.parent)


def deployment_from_dict(
    data: dict[str, Any], overrides: dict[str, Any] | None = None, base_dir: str | Path | None = None
) -> Deployment:
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if key == "env_vars" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    if base_dir is not None:
        for key in ("model", "python"):
            merged[key] = _resolve_relative(merged.get(key), Path(base_dir))
    return Deployment.model_validate(merged)


def as_deployment(deployment: Deployment | dict | str | Path, overrides: dict[str, Any] | None = None) -> Deployment:
    """Accept a Deployment, a settings mapping, or a path to a deployment file."""
    if isinstance(deployment, Deployment):
        if not overrides:
            return deployment
        return deployment_from_dict(deployment.model_dump(), overrides)
    if isinstance(deployment, dict):
        return deployment_from_dict(deployment, overrides)
    return load_deployment(deployment, overrides)


def identity_fields() -> list[str]:
    return [
        name
        for name, field in Deployment.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("identity")
    ]


def config_hash(dep: Deployment) -> str:
    """Hash of the settings that change what the server answers. Where or how long it runs
    (port, partition, walltime, GPUs, timeouts) is left out, so moving a server never
    reruns finished work."""
    values = {name: getattr(dep, name) for name in identity_fields()}
    values["served_model_name"] = dep.served_name
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def identity(dep: Deployment) -> dict[str, str]:
    """What the sentinel holds: who is served, never where or with which key."""
    return {
        "deployment": dep.name,
        "model": dep.model,
        "served_name": dep.served_name,
        "config_hash": config_hash(dep),
    }


def build_command(dep: Deployment, host: str, port: int, chat_template_path: str | None) -> list[str]:
    """The server's argv: the template's tokens, then our flags. The API key is never on it
    (it goes through VLLM_API_KEY), so `ps` and sacct cannot show it."""
    values = {
        "model": dep.model,
        "python": dep.python or sys.executable,
        "image": dep.image or "",
        "served_model_name": dep.served_name,
    }
    # Split first, format per token: values with spaces stay one argument.
    argv = [token.format(**values) for token in shlex.split(dep.serve_command)]
    argv += ["--host", host, "--port", str(port), "--served-model-name", dep.served_name]
    # 1 is vLLM's default; leaving it out keeps stand-in servers (tests) happy.
    if dep.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(dep.tensor_parallel_size)]
    if dep.pipeline_parallel_size > 1:
        argv += ["--pipeline-parallel-size", str(dep.pipeline_parallel_size)]
    if dep.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(dep.data_parallel_size)]
    if dep.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(dep.gpu_memory_utilization)]
    if dep.max_model_len is not None:
        argv += ["--max-model-len", str(dep.max_model_len)]
    if dep.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(dep.max_num_seqs)]
    if dep.trust_remote_code:
        argv.append("--trust-remote-code")
    if dep.reasoning_parser:
        argv += ["--reasoning-parser", dep.reasoning_parser]
    if chat_template_path:
        argv += ["--chat-template", chat_template_path]
    argv += list(dep.extra_args)
    if dep.pre_cmd:
        # Same shell, then exec: the server keeps the pid we watch and signal.
        script = f'set -e\n{dep.pre_cmd}\nset +e\nexec "$@"'
        argv = ["bash", "-c", script, "longdoc-serve"] + argv
    return argv
