# 04 page classification: which visual reasoning content a page holds (8 categories, 45 subcategories).


rule classify:
    input:
        **get_stage_inputs("classify"),
    output:
        stage_output("classify"),
    log:
        f"{RESULTS}/logs/classify/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="classify",
        settings=get_stage_settings("classify"),
        endpoint=get_endpoint_params("classify"),
        journal=journal_path("classify"),
    script:
        "../scripts/run_stage.py"
