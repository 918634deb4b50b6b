"""Snakemake entry point of `snakemake evaluate`; the work is in longdoc_sdg.evaluate (shared
with `longdoc-sdg evaluate`)."""

from pathlib import Path

from longdoc_sdg.endpoints import keep_server_alive, resolve_endpoint
from longdoc_sdg.evaluate import SECTION, run_evaluation
from longdoc_sdg.io import start_job
from longdoc_sdg.seed.config import seed_params

start_job(snakemake)
# `evaluate.run` steers the job (request limits, retries): read at job time, never a rerun trigger.
run = snakemake.config[SECTION]["run"]
endpoint = resolve_endpoint(snakemake.params.endpoint, snakemake.config, SECTION)
for key in ("concurrency", "retry", "error_budget", "request_timeout_s"):
    endpoint[key] = run[key]
settings = {**snakemake.params.settings["settings"], **{k: v for k, v in run.items() if k == "image_transport"}}

with keep_server_alive(snakemake.params.endpoint):
    run_evaluation(
        snakemake.input.samples,
        snakemake.config[SECTION]["settings"]["documents"],
        str(Path(snakemake.output.scores).parent),
        endpoint,
        settings,
        seed_params(snakemake.params.settings["seed"], snakemake.config["seed"]["run"]).model_dump(mode="json"),
        snakemake.threads,
    )
