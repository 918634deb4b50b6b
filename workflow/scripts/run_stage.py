"""Snakemake entry point of the model stages 02-09; the work is in longdoc_sdg.stages."""

from longdoc_sdg.endpoints import resolve_endpoint
from longdoc_sdg.io import setup_job_logging
from longdoc_sdg.stages import run_stage

setup_job_logging(snakemake.log[0])
stage = snakemake.params.stage
# Concurrency and retry limits steer the run without changing its rows, so they are read from
# the config here on purpose instead of through params (a change must not rerun finished shards).
steering = {
    key: value
    for key, value in snakemake.config["stages"][stage].items()
    if key in ("concurrency", "retry", "error_budget")
}
run_stage(
    stage,
    inputs={key: value for key, value in snakemake.input.items() if key != "sentinel"},
    output=snakemake.output[0],
    params={**snakemake.params.settings["settings"], **steering},
    endpoint=resolve_endpoint(snakemake.params.endpoint),
    threads=snakemake.threads,
    journal_path=snakemake.params.journal,
)
