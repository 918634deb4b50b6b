# Run statistics (DuckDB over every stage's shards) and the figures of `snakemake --report`.


report: "../report/workflow.rst"


rule stats:
    input:
        unpack(get_stats_inputs),
    output:
        json=f"{RESULTS}/report/stats.json",
        tables=expand(f"{RESULTS}/report/stats/{{table}}.parquet", table=STATS_TABLES),
    log:
        f"{RESULTS}/logs/stats/stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats/stats.tsv"
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=get_report_settings(),
    script:
        "../scripts/stats.py"


rule report_figures:
    input:
        stats=rules.stats.output.json,
    output:
        **report_figure_outputs(),
    log:
        f"{RESULTS}/logs/report_figures/report_figures.log",
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=get_report_settings(),
    script:
        "../scripts/stats.py"


rule report_samples:
    input:
        unpack(get_samples_inputs),
    output:
        report(
            f"{RESULTS}/report/samples.html",
            caption="../report/samples.rst",
            category="Samples",
            labels={"figure": "sample QA rows with their pages"},
        ),
    log:
        f"{RESULTS}/logs/report_samples/report_samples.log",
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        demo=config["demo"],
    script:
        "../scripts/stats.py"


rule summary:
    input:
        stats=rules.stats.output.json,
        run=get_run_targets,
        ledger=get_ledger_targets,
    output:
        SUMMARY,
    log:
        f"{RESULTS}/logs/summary/summary.log",
    localrule: True
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        plan=get_summary_plan(),
    script:
        "../scripts/stats.py"
