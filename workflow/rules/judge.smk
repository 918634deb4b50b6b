# 09 judge: a frontier model scores QA rows on five weighted rubrics. One job per shard judges
# every judged QA stage (fewer jobs to plan at scale); a stage whose QA rows and judge settings
# are unchanged is reused, not judged again (longdoc_sdg.memo).


if JUDGED:

    rule judge:
        input:
            **get_stage_inputs("judge"),
        output:
            **{qa_stage: judge_output(qa_stage) for qa_stage in JUDGED},
        log:
            f"{RESULTS}/logs/judge/{{shard}}.log",
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
            # One journal per judged stage: JOURNAL_DIR/QA_STAGE/SHARD.jsonl.
            journal_dir=f"{RESULTS}/.journal/judge",
            reuse_dir=f"{RESULTS}/.cache/judge",
        script:
            "../scripts/run_stage.py"
