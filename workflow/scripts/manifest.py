"""Snakemake entry point of the manifest checkpoint; the work is in longdoc_sdg.manifest."""

import os

from longdoc_sdg.io import get_logger, start_job
from longdoc_sdg.manifest import write_index

start_job(snakemake)
index = write_index(os.path.dirname(snakemake.output[0]), snakemake.params.source, snakemake.params.documents_per_shard)
get_logger("manifest").info("%d shard(s) in the manifest", len(index["shards"]))
