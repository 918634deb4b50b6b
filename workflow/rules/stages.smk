# Stages 02-09, one rule each, generated from the stage registry (longdoc_sdg.registry): a
# stage reads its seed tables and upstream outputs per shard and writes one parquet per shard
# (the judge: one per judged QA stage and shard, judge/{qa_stage}/{shard}.parquet).


for spec in map(get_spec, model_stages()):

    rule:
        name:
            spec.name
        input:
            **get_stage_inputs(spec.name),
        output:
            stage_output(spec.name),
        log:
            log_path(spec.name),
        retries: 2
        conda:
            "../../environment.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=240,
        params:
            stage=spec.name,
            settings=get_stage_settings(spec.name),
            endpoint=get_endpoint_params(spec.name),
            journal=journal_path(spec.name),
        script:
            "../scripts/run_stage.py"
