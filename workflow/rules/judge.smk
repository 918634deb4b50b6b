# 09 judge: a frontier model scores each QA row on five weighted rubrics.


rule judge:
    input:
        unpack(get_stage_inputs("judge")),
    output:
        f"{RESULTS}/judge/{{qa_stage}}/{{shard}}.parquet",
    log:
        f"{RESULTS}/logs/judge/{{qa_stage}}/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="judge",
        settings=get_stage_settings("judge"),
        endpoint=get_endpoint_params("judge"),
        journal=f"{RESULTS}/.journal/judge/{{qa_stage}}/{{shard}}.jsonl",
    script:
        "../scripts/run_stage.py"
