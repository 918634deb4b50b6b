# `snakemake evaluate`: score a model (evaluate.model, an alias of `models:`) on a benchmark in
# MMLongBench-Doc's layout (evaluate.settings.samples and .documents). Not part of `all`.
# The job reaches or serves its model like a stage job (a deployment nobody started yet is
# served by the job itself and stopped at the end of the run); its seed, answers and journal
# stay under results/evaluate/ so an interrupted evaluation resumes.


rule evaluate:
    input:
        unpack(get_evaluate_inputs),
    output:
        scores=f"{RESULTS}/evaluate/scores.json",
        results=f"{RESULTS}/evaluate/results.json",
        failures=f"{RESULTS}/evaluate/failures.jsonl",
        report=f"{RESULTS}/evaluate/report.html",
    log:
        f"{RESULTS}/logs/evaluate/evaluate.log",
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        settings=get_evaluate_settings,
        endpoint=get_evaluate_endpoint,
    script:
        "../scripts/evaluate.py"
