# 01 seed: fetch each shard's documents, render pages once, list the documents.
# Before any shard renders, duplicates and benchmark documents are screened across all shards
# (longdoc_sdg.seed.dedup): a fingerprint per shard, then one screen over them all.


rule fingerprint:
    input:
        manifest=get_manifest_shard,
    output:
        f"{RESULTS}/seed/{{shard}}/fingerprints.parquet",
    log:
        f"{RESULTS}/logs/fingerprint/{{shard}}.log",
    conda:
        "../../environment.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        seed=get_fingerprint_settings(),
        decontamination=config["decontamination"]["settings"],
        code_version=run_plan.__version__,
    script:
        "../scripts/fingerprint.py"


rule screen_sources:
    input:
        fingerprints=get_fingerprint_tables,
    output:
        SOURCE_EXCLUSIONS,
    log:
        f"{RESULTS}/logs/seed/screen_sources.log",
    conda:
        "../../environment.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        decontamination=config["decontamination"]["settings"],
        code_version=run_plan.__version__,
    script:
        "../scripts/screen_sources.py"


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
        # The screen's decisions on a shard depend only on it and earlier shards: a new shard
        # reruns the screen, not earlier seeds (ancient). Its own fingerprints (not ancient)
        # bring a new shard's seed into the run: Snakemake does not look at a job again
        # whose only link to a rerunning job is an ancient file.
        fingerprints=f"{RESULTS}/seed/{{shard}}/fingerprints.parquet",
        exclusions=ancient(SOURCE_EXCLUSIONS),
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
