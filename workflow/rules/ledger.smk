# The serving ledger: GPU time per served deployment (ready to stop, every replica) and GPU-hours
# per 1,000 accepted rows per stage. Runs after every served deployment is stopped (its `served`
# marker is written once teardown has accounted for it in {SERVE_DIR}/ledger.jsonl).


rule ledger:
    input:
        unpack(get_ledger_inputs),
    output:
        json=f"{RESULTS}/report/ledger.json",
        figure=report(
            f"{RESULTS}/report/figures/ledger.png",
            caption="../report/ledger.rst",
            category="Cost",
            labels={"figure": "GPU-hours per 1,000 accepted rows"},
        ),
    log:
        f"{RESULTS}/logs/ledger/ledger.log",
    localrule: True
    conda:
        "../../environment.yaml"
    params:
        stage_deployments=get_ledger_stage_deployments(),
        ledger_file=f"{SERVE_DIR}/ledger.jsonl",
    script:
        "../scripts/ledger.py"
