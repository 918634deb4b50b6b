# 02 ocr: page text with element boxes (Nemotron-Parse endpoint, or the PDF's own text layer).


rule ocr:
    input:
        **get_stage_inputs("ocr"),
    output:
        stage_output("ocr"),
    log:
        f"{RESULTS}/logs/ocr/{{shard}}.log",
    retries: 2
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        stage="ocr",
        settings=get_stage_settings("ocr"),
        endpoint=get_endpoint_params("ocr"),
        journal=journal_path("ocr"),
    script:
        "../scripts/run_stage.py"
