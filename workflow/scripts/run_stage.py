"""Snakemake entry point of the model stages (longdoc_sdg.registry); the work is in longdoc_sdg.stages."""

import contextlib
import time

from longdoc_sdg import progress
from longdoc_sdg.endpoints import deployment_context, keep_server_alive, resolve_endpoint
from longdoc_sdg.io import start_job
from longdoc_sdg.plan import stage_config_section
from longdoc_sdg.stages import run_stage, stage_needs_endpoint
from longdoc_sdg.stages.base import deep_merge

start_job(snakemake)
started = time.monotonic()
stage = snakemake.params.stage
# Run settings (`stages.NAME.run`) steer the job without changing its rows: read here from the
# config at job time, never through params, so changing them never reruns finished shards.
run = snakemake.config["stages"][stage]["run"]
# Result-changing settings come from params (validated, hashed); run-only stage fields (e.g.
# image transport) from the config.
params = deep_merge(stage_config_section(snakemake.config, stage), snakemake.params.settings["settings"])
inputs = {key: value for key, value in snakemake.input.items() if key != "serving"}
# A shard that needs no model (OCR 'auto', every page with a text layer) never starts its server.
uses_model = stage_needs_endpoint(stage, params, inputs)
endpoint = resolve_endpoint(snakemake.params.endpoint, snakemake.config, stage) if uses_model else None
if endpoint is not None:
    for key in ("concurrency", "retry", "error_budget", "request_timeout_s"):
        endpoint[key] = run[key]
    if snakemake.params.endpoint["mode"] == "serve":
        # The deployment's context length and model size each request's context budget.
        endpoint["context"] = deployment_context(snakemake.config, snakemake.params.endpoint["deployment"])

with keep_server_alive(snakemake.params.endpoint) if uses_model else contextlib.nullcontext():
    run_stage(stage, inputs, snakemake.output[0], params, endpoint, snakemake.threads, snakemake.params.journal)

progress.report_job(
    snakemake.config["results_dir"],
    snakemake.rule,
    snakemake.wildcards.shard,
    progress.output_rows(snakemake.output),
    time.monotonic() - started,
)
