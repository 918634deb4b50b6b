"""config/demo-vllm.yaml (`longdoc-sdg demo --vllm`) as the demo layers it: over config/config.yaml
and config/demo.yaml, snakemake merging them. It must fit the tiny deployment it serves, or every
row ends context_too_long or too_many_images before a request (the real run is done by hand: it
takes minutes)."""

from __future__ import annotations

import copy

import yaml
from snakemake.utils import update_config

from conftest import REPO
from longdoc_sdg.config import workflow_config_model
from longdoc_sdg.serve import load_deployment
from longdoc_sdg.serve.deployment import image_limit


def demo_vllm_config() -> dict:
    config: dict = {}
    for name in ("config.yaml", "demo.yaml", "demo-vllm.yaml"):
        update_config(config, yaml.safe_load((REPO / "config" / name).read_text()))
    return config


def test_demo_vllm_stages_fit_the_served_context_and_image_limit():
    raw = demo_vllm_config()
    config = workflow_config_model().model_validate(copy.deepcopy(raw))
    assert raw["models"]["demo"] == {"endpoint": None, "deployment": "tiny-cpu-vlm"}
    deployment = load_deployment(
        REPO / "config" / "deployments" / "tiny-cpu-vlm.yaml", raw["serving"]["run"]["overrides"]["tiny-cpu-vlm"]
    )
    served = [name for name, stage in raw["stages"].items() if stage.get("model") == "demo"]
    assert set(served) >= {"text_qa", "classify", "visual_qa", "single_page_qa", "windowed_qa", "whole_document_qa"}
    for name in served:
        settings = getattr(config.stages, name).settings
        # The stages' prompts take about 3,000 tokens by the budget's estimate: half the context
        # at most for the reply leaves them room.
        assert settings.max_tokens <= deployment.max_model_len // 2, (name, settings.max_tokens)
    limit = image_limit(deployment)
    assert config.stages.whole_document_qa.settings.max_pages <= limit
    assert config.stages.windowed_qa.settings.window_size <= limit
