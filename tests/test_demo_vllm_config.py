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


def test_demo_labels_name_what_made_the_answers():
    """The summary, the report's pages and the dataset card say where a demo's answers came from:
    the test double for `longdoc-sdg demo`, the tiny real model for `--vllm`."""
    from longdoc_sdg.config import TEST_DOUBLE_DEMO, ExportCard, demo_source
    from longdoc_sdg.export.hub import render_card
    from longdoc_sdg.report.figures import summary_html
    from longdoc_sdg.report.samples import samples_html
    from longdoc_sdg.report.summary import build_summary, render_text

    fake = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["demo"]
    real = demo_vllm_config()["demo"]
    assert demo_source(fake) == TEST_DOUBLE_DEMO and demo_source(False) is None
    assert "vLLM" in demo_source(real) and "test-double" not in demo_source(real)

    stats = {
        "generated": "2026-01-01T00:00:00+00:00",
        "totals": {"documents_listed": 1, "documents_seeded": 1, "documents_failed": 0, "pages": 3, "exported": {}},
        "tables": {"stage_yield": [], "failure_reasons": [], "tokens": []},
    }

    card = ExportCard()
    for demo in (fake, real):
        plan = {"results": "results-demo", "skipped": [], "served": {}, "report": True, "export": {}, "demo": demo}
        summary = build_summary(stats, plan, {})
        assert summary["demo"] is True and summary["demo_source"] == demo_source(demo)
        pages = [
            render_text(summary),
            summary_html(stats, demo),
            samples_html([], {}, demo),
            render_card({"tags": ["demo-data"], "configs": []}, {}, {}, card, {"demo": demo}),
        ]
        for page in pages:
            assert "DEMO DATA" in page and demo_source(demo) in page, page[:400]
        other = demo_source(real if demo is fake else fake)
        assert not any(other in page for page in pages)
