"""Snakemake entry point of stage 01 (seed); the work is in longdoc_sdg.seed."""

import time

from longdoc_sdg import progress
from longdoc_sdg.io import start_job
from longdoc_sdg.registry import SEED_TABLES
from longdoc_sdg.seed import run_seed_shard
from longdoc_sdg.seed.config import seed_params

start_job(snakemake)
started = time.monotonic()
run_seed_shard(
    manifest_path=snakemake.input.manifest,
    outputs={name: snakemake.output[name] for name in SEED_TABLES},
    # `seed.settings` arrive as params (rerun triggers); `seed.run` is read from the config at
    # job time, so download, sandbox and compression limits never rerun a shard.
    params=seed_params(snakemake.params.settings, snakemake.config["seed"]["run"]),
    threads=snakemake.threads,
    decontamination=snakemake.params.decontamination,
    cache_dir=f"{snakemake.config['results_dir']}/.cache/decontamination",
    screening={"exclusions": snakemake.input.exclusions, "fingerprints": snakemake.input.fingerprints},
)
progress.report_job(
    snakemake.config["results_dir"],
    "seed",
    snakemake.wildcards.shard,
    progress.output_rows([snakemake.output.pages]),
    time.monotonic() - started,
    unit="pages",
)
