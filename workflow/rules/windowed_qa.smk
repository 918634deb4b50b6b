# 07 windowed QA: questions that need two or more pages of a window of consecutive pages.


rule windowed_qa:
    input:
        **get_stage_inputs("windowed_qa"),
    output:
        stage_output("windowed_qa"),
    log:
        f"{RESULTS}/logs/windowed_qa/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="windowed_qa",
        settings=get_stage_settings("windowed_qa"),
        endpoint=get_endpoint_params("windowed_qa"),
        journal=journal_path("windowed_qa"),
    script:
        "../scripts/run_stage.py"
