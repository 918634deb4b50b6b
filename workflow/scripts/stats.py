"""Snakemake entry point of the stats, report_figures, report_samples and summary rules; the work is in longdoc_sdg.report."""

import json

from longdoc_sdg.io import as_list as files
from longdoc_sdg.io import start_job

start_job(snakemake)


rule = snakemake.rule
if rule == "stats":
    from longdoc_sdg.report.stats import STATS_TABLES, write_stats

    write_stats(
        inputs={key: files(value) for key, value in snakemake.input.items()},
        json_path=snakemake.output.json,
        table_paths=dict(zip(STATS_TABLES, files(snakemake.output.tables))),
        params=snakemake.params.settings,
        mem_mb=snakemake.resources.mem_mb,
    )
elif rule == "report_figures":
    from longdoc_sdg.report.figures import FIGURES, draw_figures, write_summary

    with open(snakemake.input.stats, encoding="utf-8") as handle:
        stats = json.load(handle)
    draw_figures(
        stats,
        {name: snakemake.output[name] for name in FIGURES if name in snakemake.output.keys()},
        snakemake.params.settings,
    )
    write_summary(stats, snakemake.output.summary, demo=snakemake.params.settings.get("demo", False))
elif rule == "report_samples":
    from longdoc_sdg.report.samples import write_samples

    write_samples(
        {key: files(value) for key, value in snakemake.input.items()},
        snakemake.output[0],
        demo=snakemake.params.demo,
        mem_mb=snakemake.resources.mem_mb,
    )
elif rule == "summary":
    from longdoc_sdg.report.summary import build_summary, write_summary_json

    with open(snakemake.input.stats, encoding="utf-8") as handle:
        stats = json.load(handle)
    ledger = None
    for path in files(snakemake.input.ledger):
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                ledger = json.load(handle)
    write_summary_json(snakemake.output[0], build_summary(stats, snakemake.params.plan, ledger))
else:
    raise ValueError(f"stats.py does not handle rule {rule}")
