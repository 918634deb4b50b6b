"""Which stages run, against which endpoint, with which settings — pure functions of the config.

The Snakemake rules call these so the decisions are testable without Snakemake and every
result-changing setting reaches its rule through `params:`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from . import __version__

MODEL_STAGES = (
    "ocr",
    "text_qa",
    "classify",
    "visual_qa",
    "single_page_qa",
    "windowed_qa",
    "whole_document_qa",
)
QA_STAGES = ("text_qa", "visual_qa", "single_page_qa", "windowed_qa", "whole_document_qa")
ALL_MODEL_STAGES = MODEL_STAGES + ("judge",)

# Which seed tables or stage outputs each stage reads (besides its endpoint).
STAGE_INPUTS = {
    "ocr": ("pages",),
    "text_qa": ("ocr",),
    "classify": ("pages",),
    "visual_qa": ("classify", "pages"),
    "single_page_qa": ("pages",),
    "windowed_qa": ("windows", "pages"),
    "whole_document_qa": ("documents", "pages"),
    "judge": ("pages",),  # plus the judged QA stage's output
}
SEED_TABLES = ("pages", "documents", "windows", "failures")


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


def model_alias(config: dict, stage: str) -> str:
    return config["stages"][stage]["model"]


def model_spec(config: dict, stage: str) -> dict:
    """The stage's model: {deployment: NAME} or {endpoint: {base_url, model, api_key_env}}."""
    return config["models"][model_alias(config, stage)]


def stage_deployment(config: dict, stage: str) -> str | None:
    """The deployment served for the stage (None when its model is an endpoint)."""
    return model_spec(config, stage).get("deployment")


def endpoint_mode(config: dict, stage: str) -> str:
    if stage == "ocr" and config["stages"][stage]["settings"].get("engine", "pdf-text") == "pdf-text":
        return "none"
    spec = model_spec(config, stage)
    if (spec.get("endpoint") or {}).get("base_url"):
        return "manual"
    if config["serving"]["enabled"] and spec.get("deployment"):
        return "serve"
    return "unavailable"


def _unavailable_reason(config: dict, stage: str) -> str:
    alias = model_alias(config, stage)
    deployment = stage_deployment(config, stage)
    if deployment:
        return (
            f"its model {alias!r} is deployment '{deployment}': set serving.enabled=true to serve it, or point "
            f"models.{alias} at a running endpoint ({{endpoint: {{base_url, model, api_key_env}}}})"
        )
    return f"needs a model endpoint: set models.{alias}.endpoint.base_url (+ model, api_key_env)"


def stage_statuses(config: dict) -> dict[str, StageStatus]:
    statuses: dict[str, StageStatus] = {}
    for stage in ALL_MODEL_STAGES:
        settings = config["stages"][stage]
        mode = endpoint_mode(config, stage)
        upstream = [s for s in STAGE_INPUTS[stage] if s in MODEL_STAGES]
        if stage == "judge":
            upstream = [s for s in settings["settings"].get("judge_stages", []) if s in QA_STAGES]
        blocked = [s for s in upstream if not statuses[s].active]
        if not settings.get("enabled", True):
            statuses[stage] = StageStatus(stage, False, "disabled", "disabled in config")
        elif mode == "unavailable":
            statuses[stage] = StageStatus(stage, False, mode, _unavailable_reason(config, stage))
        elif stage == "judge" and not upstream:
            statuses[stage] = StageStatus(
                stage, False, "disabled", "no QA stage listed in stages.judge.settings.judge_stages"
            )
        elif stage == "judge" and len(blocked) == len(upstream):
            statuses[stage] = StageStatus(stage, False, mode, f"waits for {', '.join(blocked)}")
        elif stage != "judge" and blocked:
            statuses[stage] = StageStatus(stage, False, mode, f"waits for {', '.join(blocked)}")
        else:
            how = {"none": "runs on CPU, no endpoint", "manual": "manual endpoint", "serve": "served deployment"}[mode]
            statuses[stage] = StageStatus(stage, True, mode, how)
    return statuses


def judged_stages(config: dict) -> list[str]:
    statuses = stage_statuses(config)
    if not statuses["judge"].active:
        return []
    return [s for s in config["stages"]["judge"]["settings"]["judge_stages"] if statuses[s].active]


def stage_config_section(config: dict, stage: str) -> dict:
    """The stage's own config as a job works with it: its settings (with the question-type
    weights of `mix.target`) plus the few of its fields that only steer a run (e.g. image
    transport), which the config keeps under `run:`."""
    from .config import STAGE_RUN_FIELDS
    from .mix import apply_mix

    section = config["stages"][stage]
    run = {key: section["run"][key] for key in STAGE_RUN_FIELDS if key in section["run"]}
    settings = apply_mix((config.get("mix") or {}).get("target", "reference"), stage, section["settings"])
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
