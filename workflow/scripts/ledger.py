"""Snakemake entry point of the ledger rule; the work is in longdoc_sdg.report.ledger."""

import json

from longdoc_sdg.io import as_list, start_job, write_text_atomic
from longdoc_sdg.report.ledger import build_ledger, ledger_figure

start_job(snakemake)
deployments = snakemake.params.stage_deployments
stage_files = {stage: as_list(snakemake.input[f"stage_{stage}"]) for stage in deployments}
ledger = build_ledger(snakemake.params.ledger_file, stage_files, deployments)
write_text_atomic(snakemake.output.json, json.dumps(ledger, indent=2, sort_keys=True) + "\n")
ledger_figure(ledger, snakemake.output.figure)
