"""Snakemake entry point of the publish rule; the work is in longdoc_sdg.export.publish."""

from longdoc_sdg.export.publish import publish_folder
from longdoc_sdg.io import start_job

start_job(snakemake)
# The token variable (`publish.run`) is read at job time, not a rerun trigger.
params = {**snakemake.params.settings, **snakemake.config["publish"]["run"]}
publish_folder(snakemake.input.hub, params, snakemake.output.record)
