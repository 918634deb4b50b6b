"""What the export, publish and report rules read and make — pure functions of the config, the stage
statuses and the shard list, so the Snakemake input functions stay one-liners and are testable."""

from __future__ import annotations

from .. import __version__
from ..plan import judged_stages, qa_inputs
from ..registry import get_spec, model_stages, qa_stages
from .common import dataset_path, hub_dir, publish_record, reference_dir, summary_path

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
    return [s for s in qa_stages() if statuses[s].active and (chosen is None or s in chosen)]


def _per_qa_stages() -> list[str]:
    return [s for s in model_stages() if get_spec(s).per_qa_stage]


def _shards(results: str, stage: str, shards: list[str]) -> list[str]:
    return [f"{results}/{stage}/{shard}.parquet" for shard in shards]


def _seed(results: str, table: str, shards: list[str]) -> list[str]:
    return [f"{results}/seed/{shard}/{table}.parquet" for shard in shards]


def dataset_inputs(config: dict, statuses: dict, results: str, shards: list[str], stage: str) -> dict:
    inputs = {"qa": _shards(results, stage, shards), "documents": _seed(results, "documents", shards)}
    # the verdicts of the stages run per QA stage (judge, verify), by their name
    for name in _per_qa_stages():
        if stage in qa_inputs(config, name, statuses):
            inputs[name] = _shards(results, f"{name}/{stage}", shards)
    upstream = (get_spec(stage).carries or (None,))[0]
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
    inputs = {
        "datasets": [dataset_path(results, s) for s in stages],
        "summaries": [summary_path(results, s) for s in stages],
        "pages": _seed(results, "pages", shards),
    }
    if shards and any(status.active and status.mode == "serve" for status in statuses.values()):
        inputs["ledger"] = f"{results}/report/ledger.json"  # the card's compute section
    return inputs


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
        "mix": mix_statement(config),
        "demo": config.get("demo") or False,
        "code_version": __version__,
    }


def mix_statement(config: dict) -> dict:
    """`mix.settings.target` and the question-type weights each exported QA stage ran with (for the card)."""
    from ..plan import stage_config_section
    from ..stages import stage_config

    target = config["mix"]["settings"]["target"]
    weights = {}
    for stage in qa_stages():
        validated = stage_config(stage, stage_config_section(config, stage))
        if hasattr(validated, "question_type_weights"):  # a QA stage may not sample question types
            weights[stage] = dict(validated.question_type_weights)
    return {"target": target, "weights": weights}


def publish_settings(config: dict) -> dict:
    return config["publish"]["settings"]


def stats_inputs(config: dict, statuses: dict, results: str, shards: list[str]) -> dict:
    inputs = {
        "manifest": [f"{results}/manifest/{shard}.parquet" for shard in shards],
        "documents": _seed(results, "documents", shards),
        "failures": _seed(results, "failures", shards),
        "pages": _seed(results, "pages", shards),
    }
    for stage in model_stages():
        if statuses[stage].active and not get_spec(stage).per_qa_stage:
            inputs[stage] = _shards(results, stage, shards)
    for name in _per_qa_stages():
        inputs[name] = [f for qa in qa_inputs(config, name, statuses) for f in _shards(results, f"{name}/{qa}", shards)]
    stages = export_stages(config, statuses)
    inputs["export_datasets"] = [dataset_path(results, s) for s in stages]
    inputs["export_summaries"] = [summary_path(results, s) for s in stages]
    return inputs


def samples_inputs(config: dict, statuses: dict, results: str, shards: list[str]) -> dict:
    """What the sample page reads: the QA stages' shards, their final datasets and the pages."""
    inputs = {stage: _shards(results, stage, shards) for stage in qa_stages() if statuses[stage].active}
    inputs["pages"] = _seed(results, "pages", shards)
    inputs["export_datasets"] = [dataset_path(results, s) for s in export_stages(config, statuses)]
    return inputs


def report_settings(config: dict) -> dict:
    """Params of the figures: report settings and the judge threshold drawn on the histograms."""
    return {
        "judge_score_bins": config["report"]["settings"]["judge_score_bins"],
        "min_judge_score": config["export"]["settings"]["filters"]["min_judge_score"],
        "min_verify_score": config["export"]["settings"]["filters"]["min_verify_score"],
        "demo": config.get("demo") or False,
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


def report_figures(config: dict, statuses: dict) -> list[str]:
    """The figures with something to show: a view of stages that did not run is left out rather
    than drawn as a placeholder."""
    active = {s for s, status in statuses.items() if status.active}
    qa = active & set(qa_stages())
    wanted = {
        "stage_yield": True,
        "failures": True,
        "question_types": bool(qa),
        "answer_formats": bool(qa),
        "evidence_pages": bool(qa),
        "judge_scores": bool(judged_stages(config, statuses)),
        "quality_scores": any(get_spec(s).question_types == "anchored" for s in qa),
        "tokens": any(statuses[s].mode not in ("none",) for s in active),
        "page_classes": "classify" in active,
    }
    return [name for name in REPORT_FIGURES if wanted[name]]


def report_samples(config: dict, statuses: dict) -> bool:
    """Whether the report has a page of sample QA rows (some QA stage ran)."""
    return any(statuses[s].active for s in qa_stages())


def report_targets(config: dict, statuses: dict, results: str) -> list[str]:
    if not config["report"]["enabled"]:
        return []
    targets = [f"{results}/report/stats.json", f"{results}/report/summary.html"] + [
        f"{results}/report/figures/{name}.png" for name in report_figures(config, statuses)
    ]
    if report_samples(config, statuses):
        targets.append(f"{results}/report/samples.html")
    return targets


def summary_plan(config: dict, statuses: dict, results: str, served: list[str]) -> dict:
    """What the closing summary tells beyond the statistics: skipped stages and what they need,
    the GPUs of the served deployments, where the export and the report are."""
    from ..endpoints import deployment_gpus

    stages = export_stages(config, statuses)
    export = {}
    if stages:
        export["datasets"] = f"{results}/export/datasets/"
        layouts = config["export"]["layouts"]
        if "reference" in layouts:
            export["reference"] = f"{results}/export/reference/"
        if "hub" in layouts:
            export["hub"] = f"{results}/export/hub/"
    return {
        "results": results,
        "demo": config.get("demo") or False,
        "skipped": [{"stage": s.stage, "why": s.why, "mode": s.mode} for s in statuses.values() if not s.active],
        "served": {name: deployment_gpus(config, name) for name in served},
        "export": export,
        "report": bool(config["report"]["enabled"]),
    }
