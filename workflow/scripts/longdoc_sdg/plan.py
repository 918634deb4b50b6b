"""Which stages run, against which endpoint, with which settings — pure functions of the config.

The Snakemake rules call these so the decisions are testable without Snakemake and every
result-changing setting reaches its rule through `params:`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

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

# Settings that steer the run but do not change a stage's rows; kept out of its params.
NON_RESULT_KEYS = {"enabled", "endpoint", "deployment", "concurrency", "retry", "error_budget"}


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


def endpoint_mode(config: dict, stage: str) -> str:
    settings = config["stages"][stage]
    if stage == "ocr" and settings.get("engine") == "pdf-text":
        return "none"
    if (settings.get("endpoint") or {}).get("base_url"):
        return "manual"
    if config["serving"]["enabled"] and settings.get("deployment"):
        return "serve"
    return "unavailable"


def stage_statuses(config: dict) -> dict[str, StageStatus]:
    statuses: dict[str, StageStatus] = {}
    for stage in ALL_MODEL_STAGES:
        settings = config["stages"][stage]
        mode = endpoint_mode(config, stage)
        upstream = [s for s in STAGE_INPUTS[stage] if s in MODEL_STAGES]
        if stage == "judge":
            upstream = [s for s in settings.get("judge_stages", []) if s in QA_STAGES]
        blocked = [s for s in upstream if not statuses[s].active]
        if not settings.get("enabled", True):
            statuses[stage] = StageStatus(stage, False, "disabled", "disabled in config")
        elif mode == "unavailable":
            statuses[stage] = StageStatus(
                stage,
                False,
                mode,
                f"needs a model endpoint: set stages.{stage}.endpoint.base_url (+ model, api_key_env) "
                f"or serving.enabled=true to deploy '{settings.get('deployment')}'",
            )
        elif stage == "judge" and not upstream:
            statuses[stage] = StageStatus(stage, False, "disabled", "no QA stage listed in stages.judge.judge_stages")
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
    return [s for s in config["stages"]["judge"]["judge_stages"] if statuses[s].active]


def stage_settings(config: dict, stage: str, template_dir: str | Path | None = None) -> dict:
    """The result-changing settings of a stage: its config minus run-steering keys, plus the
    code version and the text of any prompt template it names (editing a prompt reruns it)."""
    settings = {k: v for k, v in config["stages"][stage].items() if k not in NON_RESULT_KEYS}
    return {"stage": stage, "settings": settings, "code_version": __version__}


def run_settings(config: dict, stage: str) -> dict:
    """Run-steering settings (concurrency, retries, error budget): not part of the params hash."""
    settings = config["stages"][stage]
    return {k: settings[k] for k in ("concurrency", "retry", "error_budget") if k in settings}
