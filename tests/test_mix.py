"""`mix.settings.target`: the reference's weights, weights aimed at the benchmark's mix, or custom ones."""

from __future__ import annotations

import copy

import pytest

from longdoc_sdg.config import ExportCard, default_config
from longdoc_sdg.export.hub import render_card
from longdoc_sdg.export.targets import hub_settings
from longdoc_sdg.mix import BENCHMARK_WEIGHTS
from longdoc_sdg.plan import stage_settings
from longdoc_sdg.report import benchmark
from longdoc_sdg.taxonomy import DEFAULT_WEIGHTS, sample_weighted


def config_with(target: str, **stage_weights) -> dict:
    config = copy.deepcopy(default_config())
    config["mix"] = {"settings": {"target": target}}
    for stage, weights in stage_weights.items():
        config["stages"][stage]["settings"]["question_type_weights"] = {**DEFAULT_WEIGHTS[stage], **weights}
    return config


def weights_of(config: dict, stage: str) -> dict:
    return stage_settings(config, stage)["settings"]["question_type_weights"]


def test_benchmark_target_aims_at_the_benchmark_answer_formats():
    config = config_with("benchmark")
    for stage in ("single_page_qa", "windowed_qa", "whole_document_qa"):
        weights = weights_of(config, stage)
        total = sum(weights.values())
        assert weights == pytest.approx(BENCHMARK_WEIGHTS[stage])
        assert 100 * weights["not_answerable"] / total == pytest.approx(benchmark.ANSWER_FORMATS["None"], abs=0.01)
        float_share = (weights["numerical_float"] + weights["numerical_percentage"]) / total
        assert 100 * float_share == pytest.approx(benchmark.ANSWER_FORMATS["Float"], abs=0.01)
        # Sampled over many rows, about a fifth of the questions are near-miss unanswerable ones.
        picks = [sample_weighted(weights, f"{stage}:d:p{i}:q0", 0) for i in range(4000)]
        assert 0.18 < picks.count("not_answerable") / len(picks) < 0.23
    assert weights_of(config, "text_qa") == DEFAULT_WEIGHTS["text_qa"]  # no unanswerable type there
    reference = weights_of(config_with("reference"), "single_page_qa")
    assert reference["not_answerable"] / sum(reference.values()) < 0.02  # the reference's 1.8%
    # The target reaches the rule params: changing it reruns the QA stages.
    assert stage_settings(config, "single_page_qa") != stage_settings(config_with("reference"), "single_page_qa")


def test_changed_weights_need_the_custom_target():
    with pytest.raises(
        ValueError, match=r"stages\.windowed_qa\.settings\.question_type_weights .*mix\.settings\.target: custom"
    ):
        stage_settings(config_with("reference", windowed_qa={"layout": 9.0}), "windowed_qa")
    with pytest.raises(ValueError, match=r"mix\.settings\.target is 'benchmark'"):
        stage_settings(config_with("benchmark", windowed_qa={"layout": 9.0}), "windowed_qa")
    assert weights_of(config_with("custom", windowed_qa={"layout": 9.0}), "windowed_qa")["layout"] == 9.0


def test_dataset_card_states_the_mix():
    params = hub_settings(config_with("benchmark"))
    assert params["mix"]["target"] == "benchmark"
    lines = render_card({"configs": []}, {}, {}, ExportCard(), params).splitlines()
    assert "## Question-type mix" in lines
    assert any("Target `benchmark`" in line and "None 20.6%" in line for line in lines)
    assert any(line.startswith("- `single_page_qa`: ") and "not_answerable 20.6%" in line for line in lines)
