# 05 visual QA: one-step reasoning questions on pages classified as having reasoning content.


rule visual_qa:
    input:
        **get_stage_inputs("visual_qa"),
    output:
        stage_output("visual_qa"),
    log:
        f"{RESULTS}/logs/visual_qa/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="visual_qa",
        settings=get_stage_settings("visual_qa"),
        endpoint=get_endpoint_params("visual_qa"),
        journal=journal_path("visual_qa"),
    script:
        "../scripts/run_stage.py"
