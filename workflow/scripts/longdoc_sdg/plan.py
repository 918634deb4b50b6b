"""Which stages run, against which endpoint, with which settings — pure functions of the config.

The Snakemake rules call these so the decisions are testable without Snakemake and every
result-changing setting reaches its rule through `params:`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from . import __version__
from .registry import JUDGED_INPUT, SEED_TABLES, get_spec, judge_stage, model_stages, qa_stages


@dataclass(frozen=True)
class StageStatus:
    stage: str
    active: bool
    mode: str  # none | manual | serve | disabled | unavailable
    why: str


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(value) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def stage_section(config: dict, stage: str) -> dict:
    """A stage's config section: stages.NAME, or the top-level section of a stage the workflow
    runs as its own target (evaluate)."""
    return config["stages"][stage] if stage in config["stages"] else config[stage]


def model_alias(config: dict, stage: str) -> str | None:
    return stage_section(config, stage)["model"]


def model_spec(config: dict, stage: str) -> dict:
    """The stage's model: {deployment: NAME} or {endpoint: {base_url, model, api_key_env}}
    ({} when the stage names none)."""
    alias = model_alias(config, stage)
    return config["models"][alias] if alias is not None else {}


def stage_deployment(config: dict, stage: str) -> str | None:
    """The deployment served for the stage (None when its model is an endpoint)."""
    return model_spec(config, stage).get("deployment")


def endpoint_mode(config: dict, stage: str) -> str:
    if not _uses_model(config, stage):
        return "none"
    spec = model_spec(config, stage)
    if (spec.get("endpoint") or {}).get("base_url"):
        return "manual"
    if config["serving"]["enabled"] and spec.get("deployment"):
        return "serve"
    return "unavailable"


def _unavailable_reason(config: dict, stage: str) -> str:
    alias = model_alias(config, stage)
    if alias is None:
        return f"names no model: set stages.{stage}.model to an alias of `models:`"
    deployment = stage_deployment(config, stage)
    if deployment:
        return (
            f"its model {alias!r} is deployment '{deployment}': set serving.enabled=true to serve it, or point "
            f"models.{alias} at a running endpoint ({{endpoint: {{base_url, model, api_key_env}}}})"
        )
    return f"needs a model endpoint: set models.{alias}.endpoint.base_url (+ model, api_key_env)"


def _uses_model(config: dict, stage: str) -> bool:
    """Whether the stage's settings need a model (OCR with the pdf-text engine does not)."""
    from .stages import get_stage

    handler = get_stage(stage)
    return handler.needs_endpoint(handler.config_model.model_validate(stage_config_section(config, stage)))


def serves_on_demand(config: dict, stage: str) -> bool:
    """Whether the stage's jobs decide from their own rows if they need the model (OCR 'auto':
    only pages without a text layer do), so no serve job starts its deployment in advance."""
    from .stages import get_stage

    handler = get_stage(stage)
    return handler.serves_on_demand(handler.config_model.model_validate(stage_config_section(config, stage)))


def stage_statuses(config: dict) -> dict[str, StageStatus]:
    statuses: dict[str, StageStatus] = {}
    # Stages reading QA outputs (the judge) last: they wait on QA stages listed after them too.
    for stage in sorted(model_stages(), key=lambda name: get_spec(name).per_qa_stage):
        spec = get_spec(stage)
        settings = config["stages"][stage]
        mode = endpoint_mode(config, stage)
        upstream = list(spec.upstream)
        if spec.per_qa_stage:
            upstream = [s for s in settings["settings"].get(spec.qa_stages_key, []) if s in qa_stages()]
        blocked = [s for s in upstream if not statuses[s].active]
        if not settings.get("enabled", True):
            statuses[stage] = StageStatus(stage, False, "disabled", "disabled in config")
        elif mode == "unavailable":
            statuses[stage] = StageStatus(stage, False, mode, _unavailable_reason(config, stage))
        elif spec.per_qa_stage and not upstream:
            statuses[stage] = StageStatus(
                stage, False, "disabled", f"no QA stage listed in stages.{stage}.settings.{spec.qa_stages_key}"
            )
        elif spec.per_qa_stage and len(blocked) == len(upstream):
            statuses[stage] = StageStatus(stage, False, mode, f"waits for {', '.join(blocked)}")
        elif not spec.per_qa_stage and blocked:
            statuses[stage] = StageStatus(stage, False, mode, f"waits for {', '.join(blocked)}")
        else:
            how = {"none": "runs on CPU, no endpoint", "manual": "manual endpoint", "serve": "served deployment"}[mode]
            statuses[stage] = StageStatus(stage, True, mode, how)
    return {stage: statuses[stage] for stage in model_stages()}


def qa_inputs(config: dict, stage: str, statuses: dict[str, StageStatus] | None = None) -> list[str]:
    """The active QA stages a per-QA-stage stage runs on (one job per such stage and shard)."""
    statuses = statuses or stage_statuses(config)
    spec = get_spec(stage)
    if not (spec.per_qa_stage and statuses[stage].active):
        return []
    return [s for s in config["stages"][stage]["settings"][spec.qa_stages_key] if statuses[s].active]


def judged_stages(config: dict, statuses: dict[str, StageStatus] | None = None) -> list[str]:
    """The active QA stages the judge runs on."""
    return qa_inputs(config, judge_stage(), statuses)


def input_paths(stage: str, results: str) -> dict[str, str]:
    """A stage's inputs as path patterns with {shard} (and {qa_stage} for the judge's QA input)."""
    paths = {}
    for name in get_spec(stage).inputs:
        if name in SEED_TABLES:
            paths[name] = f"{results}/seed/{{shard}}/{name}.parquet"
        elif name == JUDGED_INPUT:
            paths[name] = f"{results}/{{qa_stage}}/{{shard}}.parquet"
        else:
            paths[name] = output_path(name, results)
    return paths


def _job_path(stage: str, root: str, suffix: str) -> str:
    if get_spec(stage).per_qa_stage:
        return f"{root}/{stage}/{{qa_stage}}/{{shard}}{suffix}"
    return f"{root}/{stage}/{{shard}}{suffix}"


def output_path(stage: str, results: str) -> str:
    """A stage's output pattern: {stage}/{shard}.parquet, judge/{qa_stage}/{shard}.parquet."""
    return _job_path(stage, results, ".parquet")


def journal_path(stage: str, results: str) -> str:
    """Where a job keeps its finished rows until the shard is written (the resume journal)."""
    return _job_path(stage, f"{results}/.journal", ".jsonl")


def log_path(stage: str, results: str) -> str:
    return _job_path(stage, f"{results}/logs", ".log")


def stage_outputs(stage: str, results: str, shard: str, config: dict, statuses: dict[str, StageStatus]) -> list[str]:
    """The stage's output files of one shard (the judge: one per judged QA stage)."""
    pattern = output_path(stage, results)
    if get_spec(stage).per_qa_stage:
        return [pattern.format(qa_stage=q, shard=shard) for q in qa_inputs(config, stage, statuses)]
    return [pattern.format(shard=shard)]


def stage_config_section(config: dict, stage: str) -> dict:
    """The stage's own config as a job works with it: its settings (with the question-type
    weights of `mix.settings.target`) plus the few of its fields that only steer a run (e.g. image
    transport), which the config keeps under `run:`."""
    from .config import STAGE_RUN_FIELDS
    from .mix import apply_mix

    section = stage_section(config, stage)
    run = {key: section["run"][key] for key in STAGE_RUN_FIELDS if key in section["run"]}
    settings = apply_mix(config["mix"]["settings"]["target"], stage, section["settings"])
    return {**settings, **run}


def stage_settings(config: dict, stage: str) -> dict:
    """The result-changing settings of a stage, for its rule's params: the validated config minus
    run-steering fields, plus a fingerprint over the prompt templates, output schema and row
    logic version, so editing a prompt reruns the stage (and only it and its dependents)."""
    from .stages import get_stage, stage_config_hash
    from .stages.base import hashed_settings

    validated = get_stage(stage).config_model.model_validate(stage_config_section(config, stage))
    return {
        "settings": hashed_settings(validated),
        "fingerprint": stage_config_hash(stage, validated.model_dump(mode="json")),
        "code_version": __version__,
    }
