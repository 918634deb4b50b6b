"""Snakemake entry point of the per-shard source fingerprints; the work is in longdoc_sdg.seed.dedup."""

from longdoc_sdg.io import start_job
from longdoc_sdg.seed.config import seed_params
from longdoc_sdg.seed.dedup import fingerprint_shard

start_job(snakemake)
fingerprint_shard(
    manifest_path=snakemake.input.manifest,
    output=snakemake.output[0],
    # `seed.run` (download and worker limits) at job time: never a rerun trigger.
    seed_params=seed_params(snakemake.params.seed, snakemake.config["seed"]["run"]),
    decontamination=snakemake.params.decontamination,
    threads=snakemake.threads,
)
