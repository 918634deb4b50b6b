"""Snakemake entry point of the cross-shard source screen; the work is in longdoc_sdg.seed.dedup."""

from longdoc_sdg.io import start_job
from longdoc_sdg.seed.dedup import screen_sources

start_job(snakemake)
screen_sources(
    fingerprint_tables=list(snakemake.input.fingerprints),
    output=snakemake.output[0],
    decontamination=snakemake.params.decontamination,
    cache_dir=f"{snakemake.config['results_dir']}/.cache/decontamination",
)
