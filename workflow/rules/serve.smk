# Model servers: start a deployment (local process or Slurm GPU job), wait until it truly
# serves the model, publish a sentinel (identity only) and a runtime file (endpoint, key).


rule serve:
    output:
        sentinel=temp(sentinel_path("{deployment}")),
    log:
        f"{RESULTS}/logs/serve/{{deployment}}.log",
    localrule: True
    conda:
        "../../environment.yaml"
    params:
        deployment=get_deployment_settings,
        launcher=serve_launcher(),
        runtime=f"{SERVE_DIR}/{{deployment}}.runtime.json",
        state_dir=serve_state_dir,
    script:
        "../scripts/serve.py"
