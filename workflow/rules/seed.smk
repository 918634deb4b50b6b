# 01 seed: fetch each shard's documents, render pages once, list the documents.


# The manifest: new documents of the source become new shards (append-only, under a file
# lock). A checkpoint: the shard list is known once it ran, so parsing writes nothing.
checkpoint manifest:
    output:
        MANIFEST_INDEX,
    log:
        f"{RESULTS}/logs/manifest.log",
    localrule: True
    conda:
        "../../environment.yaml"
    params:
        source=config["source"]["settings"],
        documents_per_shard=config["sharding"]["settings"]["documents_per_shard"],
        listing=get_source_listing(),
    script:
        "../scripts/manifest.py"


rule seed:
    input:
        manifest=get_manifest_shard,
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
        settings=config["seed"]["settings"],
        decontamination=config["decontamination"]["settings"],
        code_version=run_plan.__version__,
    script:
        "../scripts/seed.py"
