# 03 text QA: questions and answers grounded in a page's OCR text, judged for relevance and correctness.


rule text_qa:
    input:
        **get_stage_inputs("text_qa"),
    output:
        stage_output("text_qa"),
    log:
        f"{RESULTS}/logs/text_qa/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="text_qa",
        settings=get_stage_settings("text_qa"),
        endpoint=get_endpoint_params("text_qa"),
        journal=journal_path("text_qa"),
    script:
        "../scripts/run_stage.py"
