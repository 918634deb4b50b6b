"""Snakemake entry point of the publish rule; the work is in longdoc_sdg.export.publish."""

from longdoc_sdg.export.publish import publish_folder
from longdoc_sdg.io import setup_job_logging

setup_job_logging(snakemake.log[0])
publish_folder(snakemake.input.hub, snakemake.params.settings, snakemake.output.record)
