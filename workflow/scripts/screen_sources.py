"""Snakemake entry point of the cross-shard source screen; the work is in longdoc_sdg.seed.dedup."""

from longdoc_sdg.io import setup_job_logging
from longdoc_sdg.seed.dedup import screen_sources

setup_job_logging(snakemake.log[0])
screen_sources(
    fingerprint_tables=list(snakemake.input.fingerprints),
    output=snakemake.output[0],
    decontamination=snakemake.params.decontamination,
    cache_dir=f"{snakemake.config['results_dir']}/.cache/decontamination",
)
