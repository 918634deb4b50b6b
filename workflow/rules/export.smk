# Final datasets per QA stage (filters, near-duplicate removal, split by document), their two
# layouts (the reference's, and a Hub-ready folder with a dataset card), and publishing it.


rule export_dataset:
    input:
        unpack(get_export_dataset_inputs),
    output:
        dataset=f"{RESULTS}/export/datasets/{{qa_stage}}.parquet",
        summary=f"{RESULTS}/export/datasets/{{qa_stage}}.summary.json",
    log:
        f"{RESULTS}/logs/export_dataset/{{qa_stage}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_dataset/{{qa_stage}}.tsv"
    conda:
        "../../environment.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=get_export_dataset_settings(),
    script:
        "../scripts/export.py"


rule export_reference:
    input:
        dataset=rules.export_dataset.output.dataset,
        pages=get_export_pages,
    output:
        directory(f"{RESULTS}/export/reference/{{qa_stage}}"),
    log:
        f"{RESULTS}/logs/export_reference/{{qa_stage}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_reference/{{qa_stage}}.tsv"
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        max_file_mb=config["export"]["settings"]["max_file_mb"],
        code_version=run_plan.__version__,
    script:
        "../scripts/export.py"


rule export_hub:
    input:
        unpack(get_export_hub_inputs),
    output:
        directory(f"{RESULTS}/export/hub"),
    log:
        f"{RESULTS}/logs/export_hub/export_hub.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_hub/export_hub.tsv"
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings=get_export_hub_settings(),
    script:
        "../scripts/export.py"


rule publish:
    input:
        hub=rules.export_hub.output[0],
    output:
        record=f"{RESULTS}/export/publish.json",
    log:
        f"{RESULTS}/logs/publish/publish.log",
    localrule: True
    conda:
        "../../environment.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        settings=get_publish_settings(),
    script:
        "../scripts/publish.py"
