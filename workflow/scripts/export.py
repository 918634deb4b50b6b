"""Snakemake entry point of the export rules (export_dataset, export_reference, export_hub); the
work is in longdoc_sdg.export."""

from longdoc_sdg.io import as_list as files
from longdoc_sdg.io import start_job

start_job(snakemake)


rule = snakemake.rule
if rule == "export_dataset":
    from longdoc_sdg.export.dataset import build_dataset

    build_dataset(
        snakemake.wildcards.qa_stage,
        inputs={key: files(value) for key, value in snakemake.input.items()},
        output=snakemake.output.dataset,
        summary_output=snakemake.output.summary,
        params=snakemake.params.settings,
        mem_mb=snakemake.resources.mem_mb,
        threads=snakemake.threads,
    )
elif rule == "export_reference":
    from longdoc_sdg.export.reference import write_reference

    write_reference(
        snakemake.wildcards.qa_stage,
        dataset=snakemake.input.dataset,
        pages_files=files(snakemake.input.pages),
        output_dir=snakemake.output[0],
        max_file_mb=snakemake.params.max_file_mb,
    )
elif rule == "export_hub":
    from pathlib import Path

    from longdoc_sdg.export.dataset import read_summary
    from longdoc_sdg.export.hub import write_hub

    datasets = {Path(p).name.split(".")[0]: p for p in files(snakemake.input.datasets)}
    summaries = {Path(p).name.split(".")[0]: read_summary(p) for p in files(snakemake.input.summaries)}
    ledger = snakemake.input.get("ledger")
    write_hub(datasets, summaries, files(snakemake.input.pages), snakemake.output[0], snakemake.params.settings, ledger)
else:
    raise ValueError(f"export.py does not handle rule {rule}")
