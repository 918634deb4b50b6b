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
        stage_yield=report(
            f"{RESULTS}/report/figures/stage_yield.png",
            caption="../report/stage_yield.rst",
            category="Yield",
            labels={"figure": "rows per stage"},
        ),
        failures=report(
            f"{RESULTS}/report/figures/failures.png",
            caption="../report/failures.rst",
            category="Yield",
            labels={"figure": "failure reasons and filter drops"},
        ),
        question_types=report(
            f"{RESULTS}/report/figures/question_types.png",
            caption="../report/question_types.rst",
            category="Question mix",
            labels={"figure": "question types"},
        ),
        answer_formats=report(
            f"{RESULTS}/report/figures/answer_formats.png",
            caption="../report/answer_formats.rst",
            category="Question mix",
            labels={"figure": "answer formats vs MMLongBench-Doc"},
        ),
        evidence_pages=report(
            f"{RESULTS}/report/figures/evidence_pages.png",
            caption="../report/evidence_pages.rst",
            category="Question mix",
            labels={"figure": "evidence pages"},
        ),
        judge_scores=report(
            f"{RESULTS}/report/figures/judge_scores.png",
            caption="../report/judge_scores.rst",
            category="Quality",
            labels={"figure": "judge scores"},
        ),
        quality_scores=report(
            f"{RESULTS}/report/figures/quality_scores.png",
            caption="../report/quality_scores.rst",
            category="Quality",
            labels={"figure": "self-checked quality scores"},
        ),
        tokens=report(
            f"{RESULTS}/report/figures/tokens.png",
            caption="../report/tokens.rst",
            category="Cost",
            labels={"figure": "token usage"},
        ),
        page_classes=report(
            f"{RESULTS}/report/figures/page_classes.png",
            caption="../report/page_classes.rst",
            category="Pages",
            labels={"figure": "page classes"},
        ),
        summary=report(
            f"{RESULTS}/report/summary.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"figure": "run summary"},
        ),
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


rule summary:
    input:
        stats=rules.stats.output.json,
        run=get_run_outputs,
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
