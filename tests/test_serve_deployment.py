"""Deployment settings: validation, shipped defaults, identity hash, command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from longdoc_sdg.serve import Deployment, build_command, config_hash, identity, image_limit, load_deployment

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "config" / "deployments"


def _dep(**fields) -> Deployment:
    return Deployment.model_validate({"name": "d", "model": "org/model", **fields})


def test_every_field_is_described_and_optional_except_name_and_model():
    for name, field in Deployment.model_fields.items():
        assert field.description, name
        assert field.is_required() == (name in {"name", "model"}), name


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="gpu_count"):
        _dep(gpu_count=2)


@pytest.mark.parametrize("template", ["vllm serve {modle}", "{python -m x", ""])
def test_bad_serve_command_is_rejected(template):
    with pytest.raises(ValidationError, match="serve_command"):
        _dep(serve_command=template)


def test_shipped_deployments_match_the_reference():
    deps = {path.stem: load_deployment(path) for path in DEPLOYMENTS.glob("*.yaml")}
    assert set(deps) >= {"nemotron-parse", "gpt-oss-120b", "qwen3-vl-30b", "qwen3-vl-235b-thinking", "tiny-cpu-vlm"}
    for stem, dep in deps.items():
        assert dep.name == stem and dep.port is None and dep.ready_timeout_s > 0

    ocr = deps["nemotron-parse"]
    assert (ocr.model, ocr.tensor_parallel_size, ocr.max_model_len, ocr.max_num_seqs) == (
        "nvidia/NVIDIA-Nemotron-Parse-v1.1",
        1,
        9000,
        128,
    )
    assert ocr.trust_remote_code and "<predict_bbox><predict_classes><output_markdown>" in ocr.chat_template

    text = deps["gpt-oss-120b"]
    assert (text.tensor_parallel_size, text.reasoning_parser, text.gpus_per_node) == (4, "openai_gptoss", 4)

    assert deps["qwen3-vl-30b"].tensor_parallel_size == 2
    assert deps["qwen3-vl-30b"].model == "Qwen/Qwen3-VL-30B-A3B-Instruct"

    qa = deps["qwen3-vl-235b-thinking"]
    assert (qa.model, qa.tensor_parallel_size, qa.reasoning_parser, qa.max_model_len) == (
        "Qwen/Qwen3-VL-235B-A22B-Thinking-FP8",
        4,
        "deepseek_r1",
        50000,
    )
    i = qa.extra_args.index("--limit-mm-per-prompt")
    assert json.loads(qa.extra_args[i + 1]) == {"video": 0}

    tiny = deps["tiny-cpu-vlm"]
    argv = build_command(tiny, "127.0.0.1", 8000, None)
    assert argv[0].endswith(".venv-vllm/bin/python") and Path(argv[0]).is_absolute()
    assert argv[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert tiny.partition == "gpu" and tiny.gpus_per_node == 1
    # As shipped, a tiny model answers JSON at all: grammar-constrained and whitespace-free,
    # so greedy replies close instead of padding to max_tokens.
    structured = json.loads(argv[argv.index("--structured-outputs-config") + 1])
    assert structured == {"backend": "guidance", "disable_any_whitespace": True}


def test_overrides_and_relative_paths(tmp_path):
    path = tmp_path / "sub" / "x.yaml"
    path.parent.mkdir()
    path.write_text("model: ./weights\npython: ../venv/bin/python\nenv_vars: {A: 1, B: two}\n")
    dep = load_deployment(path)
    assert dep.name == "x"  # from the file name
    assert dep.model == str(tmp_path / "sub" / "weights")
    assert dep.python == str(tmp_path / "venv" / "bin" / "python")
    assert dep.env_vars == {"A": "1", "B": "two"}
    dep = load_deployment(path, {"model": "/abs/model", "env_vars": {"B": "three"}, "port": 9000})
    assert (dep.model, dep.env_vars, dep.port) == ("/abs/model", {"A": "1", "B": "three"}, 9000)
    # A HF handle is never taken for a path.
    assert load_deployment(path, {"model": "org/name"}).model == "org/name"


def test_config_hash_covers_results_not_placement():
    base = _dep()
    same = [
        {"port": 1234},
        {"walltime": 5},
        {"partition": "other"},
        {"gpus": 8},
        {"nodes": 2},
        {"mem_mb": 1},
        {"cpus": 1},
        {"ready_timeout_s": 5},
        {"idle_timeout_s": None},
        {"tensor_parallel_size": 8},
        {"max_num_seqs": 4},
        {"env_vars": {"HF_HOME": "/x"}},
        {"pre_cmd": "module load cuda"},
        {"serve_command": "apptainer exec {image} vllm serve {model}", "image": "i.sif"},
        {"served_model_name": "d"},  # null means the deployment name
    ]
    for change in same:
        assert config_hash(_dep(**change)) == config_hash(base), change
    different = [
        {"model": "org/other"},
        {"served_model_name": "x"},
        {"max_model_len": 100},
        {"reasoning_parser": "qwen3"},
        {"chat_template": "{{ 1 }}"},
        {"extra_args": ["--dtype", "half"]},
        {"trust_remote_code": True},
    ]
    for change in different:
        assert config_hash(_dep(**change)) != config_hash(base), change
    assert identity(base) == {
        "deployment": "d",
        "model": "org/model",
        "served_name": "d",
        "config_hash": config_hash(base),
    }


def test_command_line():
    dep = _dep(
        model="/models/with space",
        served_model_name="m",
        tensor_parallel_size=4,
        gpu_memory_utilization=0.85,
        max_model_len=9000,
        trust_remote_code=True,
        reasoning_parser="deepseek_r1",
        extra_args=["--limit-mm-per-prompt", '{"video": 0}'],
    )
    argv = build_command(dep, "0.0.0.0", 8123, "/tmp/t.jinja")
    assert argv[:3] == ["vllm", "serve", "/models/with space"]
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--port"] == "8123" and pairs["--host"] == "0.0.0.0" and pairs["--served-model-name"] == "m"
    assert pairs["--tensor-parallel-size"] == "4" and pairs["--max-model-len"] == "9000"
    assert pairs["--chat-template"] == "/tmp/t.jinja" and "--trust-remote-code" in argv
    assert argv[-2:] == ["--limit-mm-per-prompt", '{"video": 0}']
    assert not any("api-key" in a for a in argv)
    # Defaults add nothing a stand-in server would not understand.
    assert build_command(_dep(), "h", 1, None) == [
        "vllm",
        "serve",
        "org/model",
        "--host",
        "h",
        "--port",
        "1",
        "--served-model-name",
        "d",
    ]


def test_pre_cmd_runs_in_the_same_shell_then_execs():
    argv = build_command(_dep(pre_cmd="module load cuda"), "h", 1, None)
    assert argv[:2] == ["bash", "-c"] and "module load cuda" in argv[2] and 'exec "$@"' in argv[2]
    assert argv[4:7] == ["vllm", "serve", "org/model"]


@pytest.mark.parametrize(
    "extra_args, limit",
    [
        ([], None),
        (["--dtype", "bfloat16"], None),
        (["--limit-mm-per-prompt", '{"image": 2}'], 2),
        (["--limit-mm-per-prompt", '{"video": 0}'], None),  # images not limited by the deployment
        (["--limit-mm-per-prompt", '{"image": 0, "video": 0}'], 0),  # a text-only deployment
        (["--limit-mm-per-prompt", "image=3,video=1"], 3),  # vLLM's older key=value form
        (['--limit-mm-per-prompt={"image": 5}'], 5),
        (["--limit-mm-per-prompt", '{"image": {"count": 4, "width": 512, "height": 512}}'], 4),
        (["--limit-mm-per-prompt", '{"image": 1}', "--limit-mm-per-prompt", '{"image": 6}'], 6),  # the last wins
    ],
)
def test_image_limit_comes_from_limit_mm_per_prompt(extra_args, limit):
    assert image_limit(_dep(extra_args=extra_args)) == limit


def test_shipped_deployments_image_limits():
    folder = Path(__file__).resolve().parents[1] / "config" / "deployments"
    assert image_limit(load_deployment(folder / "tiny-cpu-vlm.yaml")) == 2
    assert image_limit(load_deployment(folder / "qwen3-vl-235b-thinking.yaml")) is None


@pytest.mark.parametrize("value", ['{"image": "many"}', "image", '{"image": -1}', "{not json"])
def test_unreadable_image_limit_fails_when_the_deployment_is_read(value):
    with pytest.raises(ValidationError, match="limit-mm-per-prompt"):
        _dep(extra_args=["--limit-mm-per-prompt", value])
    with pytest.raises(ValidationError, match="without its value"):
        _dep(extra_args=["--limit-mm-per-prompt"])
