# 01 seed: fetch each shard's documents, render pages once, derive window and document seeds.


rule seed:
    input:
        manifest=f"{MANIFEST_DIR}/{{shard}}.parquet",
    output:
        pages=seed_table("pages"),
        documents=seed_table("documents"),
        windows=seed_table("windows"),
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
        settings=config["seed"]["settings"],
        code_version=run_plan.__version__,
    script:
        "../scripts/seed.py"
