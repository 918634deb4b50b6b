# Model servers: start a deployment (local process or Slurm GPU job), wait until it truly
# serves the model, publish a sentinel (identity only) and a runtime file (endpoint, key).
#
# How a server is started only when needed, without rerunning finished clients
# (Snakemake's documented rerun semantics: ancient(), temp(), update()):
# - A job is triggered by an upstream job that reruns unless every file it takes from it is
#   ancient() AND exists. So the sentinel is persistent (update(): kept before the job and
#   restored if serving fails; teardown leaves it) and clients take it as ancient().
# - A producer runs only when a rerunning consumer needs one of its outputs that is missing.
#   The runtime file (temp, removed whenever the server goes) is that output: the `served`
#   rule below takes it plus every client output of the deployment, so it reruns exactly when
#   some client reruns, and pulls the serve job in. A forced target (--force FILE) has no
#   `served` in its DAG: its client serves the deployment itself (endpoints.ensure_served),
#   so no rule needs to know what Snakemake forces.
# - Clients serving on demand (OCR 'auto': only pages without a text layer need the model)
#   take neither file: the first job that needs the deployment serves it the same way, and
#   `served` still stops it after the last client. A run whose pages all have text serves none.


rule serve:
    output:
        sentinel=update(sentinel_path("{deployment}")),
        runtime=temp(runtime_path("{deployment}")),
    log:
        f"{RESULTS}/logs/serve/{{deployment}}.log",
    localrule: True
    conda:
        "../../environment.yaml"
    params:
        # Functions taking `output`: not rerun triggers. Where and how a server runs never
        # makes Snakemake start one; only clients that need it do.
        deployment=get_deployment_settings,
        launcher=get_serve_launcher,
        state_dir=serve_state_dir,
    script:
        "../scripts/serve.py"


rule served:
    input:
        runtime=get_served_runtime,
        clients=get_deployment_clients,
    output:
        f"{SERVE_DIR}/{{deployment}}.served.json",
    log:
        f"{RESULTS}/logs/serve/{{deployment}}.served.log",
    localrule: True
    run:
        record_served(wildcards.deployment, input.clients, output[0])
