"""Snakemake entry point of the serve rule; the work is in longdoc_sdg.serve."""

from longdoc_sdg.endpoints import serve_deployment
from longdoc_sdg.io import start_job

start_job(snakemake)
serve_deployment(
    settings=snakemake.params.deployment,
    sentinel_path=snakemake.output.sentinel,
    runtime_path=snakemake.output.runtime,
    launcher=snakemake.params.launcher,
    state_dir=snakemake.params.state_dir,
)
