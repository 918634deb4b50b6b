"""What the export, publish and report rules read and make — pure functions of the config, the stage
statuses and the shard list, so the Snakemake input functions stay one-liners and are testable."""

from __future__ import annotations

from .. import __version__
from ..plan import MODEL_STAGES, QA_STAGES, judged_stages
from .common import UPSTREAM, dataset_path, hub_dir, publish_record, reference_dir, summary_path

REPORT_FIGURES = (
    "stage_yield",
    "failures",
    "question_types",
    "answer_formats",
    "evidence_pages",
    "judge_scores",
    "quality_scores",
    "tokens",
    "page_classes",
)


def export_stages(config: dict, statuses: dict) -> list[str]:
    """QA stages with a final dataset: active ones, narrowed by export.stages when set."""
    export = config.get("export") or {}
    if not export.get("enabled", True):
        return []
    chosen = export.get("stages")
    return [s for s in QA_STAGES if statuses[s].active and (chosen is None or s in chosen)]


def _shards(results: str, stage: str, shards: list[str]) -> list[str]:
    return [f"{results}/{stage}/{shard}.parquet" for shard in shards]


def _seed(results: str, table: str, shards: list[str]) -> list[str]:
    return [f"{results}/seed/{shard}/{table}.parquet" for shard in shards]


def verified_stages(config: dict, statuses: dict) -> list[str]:
    """The active QA stages the verify stage runs on (stages.verify.verify_stages)."""
    status = statuses.get("verify")
    if status is None or not status.active:
        return []
    return [s for s in config["stages"]["verify"].get("verify_stages", []) if s in statuses and statuses[s].active]


def dataset_inputs(config: dict, statuses: dict, results: str, shards: list[str], stage: str) -> dict:
    inputs = {"qa": _shards(results, stage, shards), "documents": _seed(results, "documents", shards)}
    if stage in judged_stages(config):
        inputs["judge"] = _shards(results, f"judge/{stage}", shards)
    if stage in verified_stages(config, statuses):
        inputs["verify"] = _shards(results, f"verify/{stage}", shards)
    upstream = UPSTREAM.get(stage, (None,))[0]
    if upstream and statuses[upstream].active:
        inputs["upstream"] = _shards(results, upstream, shards)
    return inputs


def dataset_settings(config: dict) -> dict:
    """The result-changing settings of a final dataset (rule params)."""
    export = config["export"]["settings"]
    return {
        "filters": export["filters"],
        "dedup": export["dedup"],
        "split": export["split"],
        "decontamination": config["decontamination"]["settings"],
        "code_version": __version__,
    }


def hub_inputs(config: dict, statuses: dict, results: str, shards: list[str]) -> dict:
    stages = export_stages(config, statuses)
    return {
        "datasets": [dataset_path(results, s) for s in stages],
        "summaries": [summary_path(results, s) for s in stages],
        "pages": _seed(results, "pages", shards),
    }


def hub_settings(config: dict) -> dict:
    source = config["source"]["settings"]
    kind = source["kind"]
    described = {"kind": kind}
    if kind == "finepdfs":
        described.update(dataset=source["finepdfs"]["dataset"], subset=source["finepdfs"]["subset"])
    return {
        "card": config["export"]["settings"]["card"],
        "max_file_mb": config["export"]["settings"]["max_file_mb"],
        "source": described,
        "code_version": __version__,
    }


def publish_settings(config: dict) -> dict:
    return config["publish"]["settings"]


def stats_inputs(config: dict, statuses: dict, results: str, shards: list[str]) -> dict:
    inputs = {
        "manifest": [f"{results}/manifest/{shard}.parquet" for shard in shards],
        "documents": _seed(results, "documents", shards),
        "failures": _seed(results, "failures", shards),
        "pages": _seed(results, "pages", shards),
    }
    for stage in MODEL_STAGES:
        if statuses[stage].active:
            inputs[stage] = _shards(results, stage, shards)
    inputs["judge"] = [f for qa in judged_stages(config) for f in _shards(results, f"judge/{qa}", shards)]
    inputs["verify"] = [f for qa in verified_stages(config, statuses) for f in _shards(results, f"verify/{qa}", shards)]
    stages = export_stages(config, statuses)
    inputs["export_datasets"] = [dataset_path(results, s) for s in stages]
    inputs["export_summaries"] = [summary_path(results, s) for s in stages]
    return inputs


def report_settings(config: dict) -> dict:
    """Params of the figures: report settings and the judge threshold drawn on the histograms."""
    return {
        "judge_score_bins": config["report"]["settings"]["judge_score_bins"],
        "min_judge_score": config["export"]["settings"]["filters"]["min_judge_score"],
        "min_verify_score": config["export"]["settings"]["filters"]["min_verify_score"],
        "code_version": __version__,
    }


def export_targets(config: dict, statuses: dict, results: str) -> list[str]:
    """Files `rule all` needs for the export (and the publish record when publishing)."""
    check_publish(config)
    stages = export_stages(config, statuses)
    if not stages:
        return []
    layouts = config["export"]["layouts"]
    out = [dataset_path(results, s) for s in stages]
    if "reference" in layouts:
        out += [reference_dir(results, s) for s in stages]
    if "hub" in layouts:
        out.append(hub_dir(results))
        if config["publish"]["enabled"]:
            out.append(publish_record(results))
    return out


def check_publish(config: dict) -> None:
    """Publishing needs the Hub layout and a target repository: say so at parse time."""
    publish = config["publish"]
    if not publish["enabled"]:
        return
    problems = []
    if "hub" not in config["export"]["layouts"]:
        problems.append("export.layouts must include 'hub' (the folder that is uploaded)")
    if not config["export"]["enabled"]:
        problems.append("export.enabled must be true")
    if not publish["settings"]["repo_id"]:
        problems.append("publish.settings.repo_id must name the target dataset repository (e.g. my-org/longdoc-qa)")
    if problems:
        raise ValueError("publish.enabled is true, but " + "; ".join(problems))


def report_targets(config: dict, results: str) -> list[str]:
    if not config["report"]["enabled"]:
        return []
    return [f"{results}/report/stats.json", f"{results}/report/summary.html"] + [
        f"{results}/report/figures/{name}.png" for name in REPORT_FIGURES
    ]
