# 06 single-page anchored QA: questions answerable from one page, anchored to stay unambiguous.


rule single_page_qa:
    input:
        **get_stage_inputs("single_page_qa"),
    output:
        stage_output("single_page_qa"),
    log:
        f"{RESULTS}/logs/single_page_qa/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="single_page_qa",
        settings=get_stage_settings("single_page_qa"),
        endpoint=get_endpoint_params("single_page_qa"),
        journal=journal_path("single_page_qa"),
    script:
        "../scripts/run_stage.py"
