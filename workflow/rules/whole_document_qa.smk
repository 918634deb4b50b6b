# 08 whole-document QA: questions over all pages of a document within the page limit.


rule whole_document_qa:
    input:
        **get_stage_inputs("whole_document_qa"),
    output:
        stage_output("whole_document_qa"),
    log:
        f"{RESULTS}/logs/whole_document_qa/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="whole_document_qa",
        settings=get_stage_settings("whole_document_qa"),
        endpoint=get_endpoint_params("whole_document_qa"),
        journal=journal_path("whole_document_qa"),
    script:
        "../scripts/run_stage.py"
