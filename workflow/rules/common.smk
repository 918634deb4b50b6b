# Config validation, the shard list, input functions and the run plan.
import os
import sys
from pathlib import Path

# The shared package lives next to the scripts; importable even without `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from longdoc_sdg import endpoints
from longdoc_sdg import plan as run_plan
from longdoc_sdg.config import check_config, check_paths
from longdoc_sdg.registry import SEED_TABLES, get_spec, model_stages, qa_stages
from longdoc_sdg import manifest as manifest_store

check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
check_paths(config)

RESULTS = config["results_dir"]
MANIFEST_DIR = f"{RESULTS}/manifest"
MANIFEST_INDEX = f"{MANIFEST_DIR}/{manifest_store.INDEX_NAME}"
SERVE_DIR = f"{RESULTS}/serve"
STATUSES = run_plan.stage_statuses(config)

# Parsing only reads: the manifest is written by the `manifest` checkpoint (seed.smk), under
# Snakemake's lock. A sharding change against an existing manifest fails here, naming both values.
manifest_store.check_sharding(
    MANIFEST_DIR, config["sharding"]["settings"]["documents_per_shard"]
)


def manifest_shards():
    """The shard names, from the manifest job's index: input functions calling this wait for
    that job (a checkpoint) before they list per-shard files."""
    checkpoints.manifest.get()
    return manifest_store.read_index(MANIFEST_DIR)["shards"]


def get_manifest_shard(wildcards):
    """A seed job's manifest file, once the manifest job listed it (so a seed file can be a
    target on a fresh directory)."""
    checkpoints.manifest.get()
    return f"{MANIFEST_DIR}/{wildcards.shard}.parquet"


def get_source_listing():
    """What the source lists now (read only): a new document reruns the manifest job. Only the
    main process decides what runs; cluster jobs skip the listing."""
    if not workflow.is_main_process:
        return None
    return manifest_store.source_fingerprint(config["source"]["settings"])


wildcard_constraints:
    shard=r"\d{5}",
    deployment=r"[A-Za-z0-9_.-]+",
    qa_stage="|".join(qa_stages()),


def stage_output(stage):
    return run_plan.output_path(stage, RESULTS)


def seed_table(table):
    return f"{RESULTS}/seed/{{shard}}/{table}.parquet"


SOURCE_EXCLUSIONS = f"{RESULTS}/seed/exclusions.parquet"


def get_fingerprint_settings():
    """The seed settings a source fingerprint depends on (not the rendering ones: a new DPI
    reseeds without fingerprinting again); its job reads `seed.run` (downloads, worker limits)
    from the config."""
    return {"warc": config["seed"]["settings"]["warc"]}


def get_fingerprint_tables(wildcards):
    """Every shard's source fingerprints, in shard order (the cross-shard screen's input)."""
    return [
        f"{RESULTS}/seed/{shard}/fingerprints.parquet" for shard in manifest_shards()
    ]


def sentinel_path(deployment):
    return f"{SERVE_DIR}/{deployment}.sentinel.json"


def runtime_path(deployment):
    return f"{SERVE_DIR}/{deployment}.runtime.json"


def get_stage_inputs(stage):
    """A stage's inputs: static path patterns of its seed tables and upstream outputs (cheap
    to plan over thousands of shards), plus, when its model is served, an input function for
    the deployment's files (see get_serving_inputs)."""
    paths = run_plan.input_paths(stage, RESULTS)
    # A stage serving on demand (OCR 'auto') starts its deployment from the first job whose
    # pages need it (endpoints.ensure_served): no serve job for a run that needs none.
    if STATUSES[stage].mode == "serve" and not run_plan.serves_on_demand(config, stage):
        paths["serving"] = get_serving_inputs(stage)
    return paths


def get_serving_inputs(stage):
    """Input function factory: the deployment's sentinel as `ancient()`, so a restarted server
    never reruns finished jobs. The serve job comes into the DAG through the `served` rule
    (see serve.smk); a client whose deployment this run never started (a forced target) serves
    it itself (endpoints.ensure_served)."""
    deployment = run_plan.stage_deployment(config, stage)

    def serving(wildcards):
        return [ancient(sentinel_path(deployment))]

    return serving


def get_endpoint_params(stage):
    """What identifies a stage's model: changing it reruns the stage; its host and key are
    read at job time (see endpoints.endpoint_params)."""
    deployment = run_plan.stage_deployment(config, stage)
    runtime = runtime_path(deployment) if deployment else None
    return endpoints.endpoint_params(config, stage, STATUSES[stage].mode, runtime)


def get_stage_settings(stage):
    return run_plan.stage_settings(config, stage)


def journal_path(stage):
    return run_plan.journal_path(stage, RESULTS)


def log_path(stage):
    return run_plan.log_path(stage, RESULTS)


def get_final_outputs(wildcards):
    """What a full run makes, the closing summary last. Every shard's seed tables and stage
    outputs are inputs of `stats` (get_stats_inputs), which the summary needs: listing them
    here too would only give Snakemake the same files to match again (thousands per run).
    """
    return get_run_targets(wildcards) + [SUMMARY]


def get_run_targets(wildcards):
    """The run-wide outputs the summary comes after: served markers, export and report."""
    shards = manifest_shards()
    record_plan_after_manifest(shards)
    outputs = []
    if shards:
        outputs += [
            f"{SERVE_DIR}/{deployment}.served.json"
            for deployment in served_deployments()
        ]
    outputs += get_export_targets() + get_report_targets()
    return outputs


def announce_plan():
    """Tell the user which stages run and what the others need (stderr: dry runs too)."""
    index = manifest_store.read_index(MANIFEST_DIR)
    known = f"{len(index['shards'])} shard(s)" if index else "no manifest yet"
    lines = [f"longdoc-sdg: {known}, source '{config['source']['settings']['kind']}'"]
    for status in STATUSES.values():
        state = "run " if status.active else "skip"
        lines.append(f"  [{state}] {status.stage:<18} {status.why}")
    print("\n".join(lines), file=sys.stderr)


if workflow.is_main_process:
    announce_plan()


def check_before_running(launcher):
    """Plan-time checks (longdoc_sdg.preflight): missing key variables, a served deployment
    that cannot start here. `launcher` None: not known yet (auto), checked by the serve job
    (get_serve_launcher).
    """
    from longdoc_sdg import preflight

    problems = preflight.api_key_problems(config, STATUSES)
    if config["serving"]["enabled"] and launcher is not None:
        problems += preflight.check_serving(
            config,
            STATUSES,
            launcher,
            lambda name: endpoints.load_deployment_of(config, name),
        )
    preflight.fail_on(problems)


if workflow.is_main_process:
    configured_launcher = config["serving"]["run"]["launcher"]
    check_before_running(None if configured_launcher == "auto" else configured_launcher)


def served_deployments():
    """Deployments this run serves: those of the active stages in serve mode."""
    names = []
    for status in STATUSES.values():
        if status.active and status.mode == "serve":
            names.append(run_plan.stage_deployment(config, status.stage))
    return sorted(set(names))


def get_deployment_clients(wildcards):
    """Every client output of a deployment (all shards of all stages it serves)."""
    outputs = []
    for stage, status in STATUSES.items():
        if not (status.active and status.mode == "serve"):
            continue
        if run_plan.stage_deployment(config, stage) != wildcards.deployment:
            continue
        for shard in manifest_shards():
            outputs += run_plan.stage_outputs(stage, RESULTS, shard, config, STATUSES)
    return outputs


def get_served_runtime(wildcards):
    """The runtime file that pulls the serve job in, unless every client of the deployment
    serves on demand (then the deployment runs only if one of them started it)."""
    for stage, status in STATUSES.items():
        if (
            status.active
            and status.mode == "serve"
            and run_plan.stage_deployment(config, stage) == wildcards.deployment
            and not run_plan.serves_on_demand(config, stage)
        ):
            return [runtime_path(wildcards.deployment)]
    return []


def record_served(deployment, clients, path):
    """The `served` marker (which deployment this run needed, for how many client outputs),
    written once every client of the deployment is done: its server then stops at once.
    """
    import json

    from longdoc_sdg.io import write_text_atomic

    # Stopped first: teardown accounts for its GPU time in the ledger, which reads the marker.
    endpoints.stop_deployment(SERVE_DIR, deployment)
    marker = {"deployment": deployment, "clients": len(clients)}
    write_text_atomic(path, json.dumps(marker) + "\n")


def get_deployment_settings(wildcards, output):
    """The full serve settings of a deployment (config/deployments/NAME.yaml + overrides).
    Takes `output`, so Snakemake does not track it: moving a server (partition, walltime,
    launcher) must not start one; the clients' params carry what changes answers."""
    return endpoints.deployment_settings(config, wildcards.deployment)


AUTO_LAUNCHER_CHECKED = []


def get_serve_launcher(wildcards, output, resources):
    """Where model servers start. 'auto' follows the profile: profiles/slurm sets the serve
    rule's `serve_launcher` resource to slurm (GPU jobs); without it, local processes. Known
    only from the serve job's resources, so the serving checks of an auto launcher run here,
    once, before the first server starts. Takes `output`: not a rerun trigger."""
    launcher = endpoints.serve_launcher(config, resources.get("serve_launcher"))
    if config["serving"]["run"]["launcher"] == "auto" and not AUTO_LAUNCHER_CHECKED:
        check_before_running(launcher)
        AUTO_LAUNCHER_CHECKED.append(launcher)
    return launcher


def serve_state_dir(wildcards, output):
    """Where the serve rule records the servers it started (next to the sentinel)."""
    return os.path.dirname(output.sentinel)


def start_heartbeat():
    endpoints.keep_run_servers_alive(SERVE_DIR)


def stop_servers():
    endpoints.stop_servers(SERVE_DIR)


# export and report
from longdoc_sdg.export import targets as export_plan
from longdoc_sdg.report.stats import STATS_TABLES


def get_export_dataset_inputs(wildcards):
    """A QA stage's shards, its judge shards (when judged), seed documents, upstream shards."""
    return export_plan.dataset_inputs(
        config, STATUSES, RESULTS, manifest_shards(), wildcards.qa_stage
    )


def get_export_dataset_settings():
    return export_plan.dataset_settings(config)


def get_export_pages(wildcards):
    return [f"{RESULTS}/seed/{shard}/pages.parquet" for shard in manifest_shards()]


def get_export_hub_inputs(wildcards):
    return export_plan.hub_inputs(config, STATUSES, RESULTS, manifest_shards())


def get_export_hub_settings():
    return export_plan.hub_settings(config)


def get_publish_settings():
    return export_plan.publish_settings(config)


def get_stats_inputs(wildcards):
    return export_plan.stats_inputs(config, STATUSES, RESULTS, manifest_shards())


def get_samples_inputs(wildcards):
    return export_plan.samples_inputs(config, STATUSES, RESULTS, manifest_shards())


def get_report_settings():
    return export_plan.report_settings(config)


def get_export_targets():
    """Final datasets, layouts and (when enabled) the publish record: for get_final_outputs."""
    return export_plan.export_targets(config, STATUSES, RESULTS)


def get_report_targets():
    """Statistics, figures and summary page: for get_final_outputs."""
    return export_plan.report_targets(config, STATUSES, RESULTS)


FIGURE_CAPTIONS = {
    "stage_yield": ("Yield", "rows per stage"),
    "failures": ("Yield", "failure reasons and filter drops"),
    "question_types": ("Question mix", "question types"),
    "answer_formats": ("Question mix", "answer formats vs MMLongBench-Doc"),
    "evidence_pages": ("Question mix", "evidence pages"),
    "judge_scores": ("Quality", "judge scores"),
    "quality_scores": ("Quality", "self-checked quality scores"),
    "tokens": ("Cost", "token usage"),
    "page_classes": ("Pages", "page classes"),
}


def report_figure_outputs():
    """The figures of the stages that run (no placeholders for the others), and the summary."""
    outputs = {
        name: report(
            f"{RESULTS}/report/figures/{name}.png",
            caption=f"../report/{name}.rst",
            category=FIGURE_CAPTIONS[name][0],
            labels={"figure": FIGURE_CAPTIONS[name][1]},
        )
        for name in export_plan.report_figures(config, STATUSES)
    }
    outputs["summary"] = report(
        f"{RESULTS}/report/summary.html",
        caption="../report/summary.rst",
        category="Summary",
        labels={"figure": "run summary"},
    )
    return outputs


# The closing summary (rule summary; printed by onsuccess).
from longdoc_sdg.report import summary as run_summary

SUMMARY = f"{RESULTS}/summary.json"
RUN_STARTED = {}


def get_summary_plan():
    """What the run planned, for the summary: skipped stages with what they need, served
    deployments with their GPUs, where the export is."""
    return export_plan.summary_plan(config, STATUSES, RESULTS, served_deployments())


def forget_dead_servers():
    """Unpublish servers a killed earlier run left behind (their process or job is gone). From
    onstart, which Snakemake runs only when jobs execute: a dry run, --touch, --lint, --dag or
    --report writes nothing. This run's DAG was planned while their runtime files still
    existed, so it has no serve job for them: the first client that needs one serves it itself
    (endpoints.ensure_served) and end-of-run teardown stops it."""
    endpoints.forget_dead_servers(SERVE_DIR)


def start_run():
    import time

    RUN_STARTED["at"] = time.time()
    forget_dead_servers()
    record_progress_plan()
    start_heartbeat()


def record_progress_plan():
    """The seed and stage jobs this run has left, per rule, for the progress lines the jobs
    print: counted from our own plan (the manifest's shards, the active stages), a job per
    output still missing. A manifest job of this run lists the shards anew: counted again then.
    """
    RUN_STARTED["plan_after_manifest"] = True
    if os.path.exists(MANIFEST_INDEX):
        record_missing_jobs(manifest_store.read_index(MANIFEST_DIR)["shards"])


def record_plan_after_manifest(shards):
    """Once the manifest job ran (this run listed the shards), the jobs it left to do."""
    if RUN_STARTED.pop("plan_after_manifest", False):
        record_missing_jobs(shards)


def record_missing_jobs(shards):
    from longdoc_sdg import progress

    jobs = {
        "seed": [[seed_table(t).format(shard=s) for t in SEED_TABLES] for s in shards]
    }
    for stage in model_stages():
        if STATUSES[stage].active:
            jobs[stage] = [
                [path]
                for shard in shards
                for path in run_plan.stage_outputs(
                    stage, RESULTS, shard, config, STATUSES
                )
            ]
    progress.record_plan(RESULTS, progress.missing_jobs(jobs))


def print_summary(failed=False):
    """Print the closing summary; apply the yield floor (summary.*, run settings). A summary
    older than this run (targets without the summary, or a failed run) is labelled so.
    """
    summary = run_summary.load_summary(SUMMARY)
    if summary is None:
        return
    floor = config["summary"]["run"]
    text = run_summary.render_text(
        summary, floor["min_ok_rows"], floor["fail_below_floor"]
    )
    if failed or os.path.getmtime(SUMMARY) < RUN_STARTED.get("at", 0):
        text = (
            f"(summary of an earlier run, {summary['generated']}: this run did not rebuild {SUMMARY})\n"
            + text
        )
    print(text, file=sys.stderr)
    low = run_summary.below_floor(summary, floor["min_ok_rows"])
    if low and floor["fail_below_floor"] and not failed:
        print(
            f"longdoc-sdg: failing the run: {', '.join(s['stage'] for s in low)} below "
            f"summary.run.min_ok_rows={floor['min_ok_rows']} (summary.run.fail_below_floor: true)",
            file=sys.stderr,
        )
        raise SystemExit(1)


# the serving ledger (rules/ledger.smk)
def served_stage_outputs():
    """Client outputs of every active served stage, by stage."""
    outputs = {}
    shards = None
    for stage, status in STATUSES.items():
        if not (status.active and status.mode == "serve"):
            continue
        shards = shards if shards is not None else manifest_shards()
        outputs[stage] = [
            path
            for shard in shards
            for path in run_plan.stage_outputs(stage, RESULTS, shard, config, STATUSES)
        ]
    return outputs


def get_ledger_inputs(wildcards):
    inputs = {"served": [f"{SERVE_DIR}/{d}.served.json" for d in served_deployments()]}
    for stage, files in served_stage_outputs().items():
        inputs[f"stage_{stage}"] = files
    return inputs


def get_ledger_stage_deployments():
    return {
        stage: run_plan.stage_deployment(config, stage)
        for stage, status in STATUSES.items()
        if status.active and status.mode == "serve"
    }


def get_ledger_targets(wildcards):
    """The ledger when this run serves something (and has shards to serve for)."""
    if not (served_deployments() and manifest_shards()):
        return []
    return [f"{RESULTS}/report/ledger.json", f"{RESULTS}/report/figures/ledger.png"]


# `snakemake evaluate` (rules/evaluate.smk)
from longdoc_sdg import evaluate as evaluation


def get_evaluate_inputs(wildcards):
    return evaluation.workflow_inputs(config)


def get_evaluate_settings(wildcards):
    return evaluation.workflow_settings(config)


def get_evaluate_endpoint(wildcards):
    """evaluate.model's identity (a rerun trigger) and how the job reaches it."""
    mode = run_plan.endpoint_mode(config, evaluation.SECTION)
    if mode not in ("manual", "serve"):
        raise ValueError(evaluation.unavailable_reason(config))
    deployment = run_plan.stage_deployment(config, evaluation.SECTION)
    runtime = runtime_path(deployment) if deployment else None
    return endpoints.endpoint_params(config, evaluation.SECTION, mode, runtime)
