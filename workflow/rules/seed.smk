# 01 seed: fetch each shard's documents, render pages once, list the documents.


rule seed:
    input:
        manifest=f"{MANIFEST_DIR}/{{shard}}.parquet",
    output:
        pages=seed_table("pages"),
        documents=seed_table("documents"),
        failures=seed_table("failures"),
    log:
        f"{RESULTS}/logs/seed/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/seed/{{shard}}.tsv"
    conda:
        "../../environment.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        seed=config["seed"],
        decontamination=config["decontamination"],
        code_version=run_plan.__version__,
    script:
        "../scripts/seed.py"
