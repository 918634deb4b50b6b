"""`mix.settings.target`: which question-type mix the QA stages aim at.

- `reference`: the reference recipe's weights (the stages' defaults; changing a stage's
  `question_type_weights` under this target is refused, so the dataset card's claim holds).
- `benchmark`: weights derived from MMLongBench-Doc's answer-format and evidence-source mix
  (report/benchmark.py), for the anchored stages (06-08) and visual QA (05); text QA (03) has no
  unanswerable type and keeps the reference's uniform weights.
- `custom`: each stage's `question_type_weights` exactly as configured.

Derivation (percent of the benchmark's questions): not answerable = None (20.6); numerical
(int) = Int (27.6); Float (14.7) halved between numerical (float) and numerical (percentage);
list = List (14.0); Str (23.1) less 1 point for multiple choice and yes/no (0.5 each, their
answers are strings) shared between layout and string by the layout share of the evidence
sources (11 of 104). Visual QA: not answerable 20.6, multiple choice and yes/no 0.5 each, the
rest to its one open type.
"""

from __future__ import annotations

from .report import benchmark
from .taxonomy import DEFAULT_WEIGHTS

TARGETS = ("reference", "benchmark", "custom")
MIXED_STAGES = ("text_qa", "visual_qa", "single_page_qa", "windowed_qa", "whole_document_qa")


def _benchmark_anchored() -> dict[str, float]:
    fmt = benchmark.ANSWER_FORMATS
    sources = benchmark.EVIDENCE_SOURCES
    layout_share = sources["layout"] / sum(sources.values())
    open_str = fmt["Str"] - 1.0
    return {
        "multiple_choice": 0.5,
        "yes_no": 0.5,
        "string": round(open_str * (1 - layout_share), 3),
        "layout": round(open_str * layout_share, 3),
        "numerical_int": fmt["Int"],
        "numerical_float": fmt["Float"] / 2,
        "numerical_percentage": fmt["Float"] / 2,
        "list": fmt["List"],
        "not_answerable": fmt["None"],
    }


def _benchmark_visual() -> dict[str, float]:
    unanswerable = benchmark.ANSWER_FORMATS["None"]
    return {
        "multiple_choice": 0.5,
        "yes_no": 0.5,
        "short": round(100 - unanswerable - 1.0, 3),
        "not_answerable": unanswerable,
    }


BENCHMARK_WEIGHTS = {
    "visual_qa": _benchmark_visual(),
    **{stage: _benchmark_anchored() for stage in ("single_page_qa", "windowed_qa", "whole_document_qa")},
}


def target_weights(target: str, stage: str) -> dict[str, float] | None:
    """The weights `target` gives `stage` (None: the stage's configured weights)."""
    if target == "benchmark":
        return BENCHMARK_WEIGHTS.get(stage, DEFAULT_WEIGHTS.get(stage))
    if target == "reference":
        return DEFAULT_WEIGHTS.get(stage)
    return None


def apply_mix(target: str, stage: str, section: dict) -> dict:
    """The stage section with the target's question-type weights; refuses weights changed under a
    target that fixes them (the card would otherwise state a mix the data does not have)."""
    weights = target_weights(target, stage)
    if weights is None or stage not in MIXED_STAGES:
        return section
    configured = section.get("question_type_weights")
    if configured is not None and target == "reference":
        defaults = DEFAULT_WEIGHTS[stage]
        changed = {k: v for k, v in configured.items() if float(v) != float(defaults.get(k, 0.0))}
        if changed:
            raise ValueError(
                f"stages.{stage}.settings.question_type_weights changes {sorted(changed)} while mix.settings.target is 'reference' "
                "(the reference's weights); set mix.settings.target: custom to use your own weights"
            )
    if configured is not None and target == "benchmark" and configured != DEFAULT_WEIGHTS.get(stage):
        raise ValueError(
            f"stages.{stage}.settings.question_type_weights is set while mix.settings.target is 'benchmark' (weights derived from "
            f"{benchmark.NAME}); remove it, or set mix.settings.target: custom"
        )
    return {**section, "question_type_weights": dict(weights)}
