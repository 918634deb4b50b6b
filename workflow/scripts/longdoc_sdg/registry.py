"""Every stage of the workflow, declared once: its name and number, what kind of stage it is,
what it reads, which model (an alias of `models:`) it uses by default, the class that does its rows, and what the
judge, export and report need to know about it. The rules, the config schema, the run plan,
export, report and requeue all read this table; adding a stage is one entry here, one handler
module and its prompt.

Inputs name seed tables (`pages`, `documents`, `failures`), upstream stages, or `qa`: the output
of the QA stage being judged, which makes the stage run once per (judged QA stage, shard).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

Kind = Literal["seed", "ocr", "classify", "qa", "judge", "verify", "evaluate"]
Unit = Literal["page", "window", "document"]

SEED_TABLES = ("pages", "documents", "failures")
JUDGED_INPUT = "qa"


@dataclass(frozen=True)
class StageSpec:
    name: str
    number: int
    kind: Kind
    summary: str
    inputs: tuple[str, ...] = ()
    handler: str | None = None  # "module:Class", imported only when the stage is used
    model: str | None = None  # the default of stages.NAME.model: an alias of the `models:` map
    # QA stages: what one question is about, its question-type set (taxonomy.TYPE_SETS), and the
    # (upstream stage, column) the exports carry over next to each question.
    unit: Unit | None = None
    question_types: str | None = None
    carries: tuple[str, str] | None = None
    enabled_by_default: bool = True  # the default of stages.NAME.enabled
    in_workflow: bool = True  # a rule and a config section; False: run by its own command

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"

    @property
    def per_qa_stage(self) -> bool:
        """One job per (QA stage, shard): the stage reads the output of a QA stage."""
        return JUDGED_INPUT in self.inputs

    @property
    def qa_stages_key(self) -> str:
        """A per-QA-stage stage's setting listing the QA stages it runs on: stages.NAME.NAME_stages."""
        return f"{self.name}_stages"

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages whose outputs this one reads."""
        return tuple(i for i in self.inputs if i not in SEED_TABLES and i != JUDGED_INPUT)

    @property
    def label(self) -> str:
        return f"{self.number:02d} {self.name}"


STAGES: tuple[StageSpec, ...] = (
    StageSpec("seed", 1, "seed", "Fetched documents, page images (stored once) and their text layer"),
    StageSpec(
        "ocr",
        2,
        "ocr",
        "Page text with element boxes and classes (PDF text layer or Nemotron-Parse)",
        inputs=("pages",),
        handler="longdoc_sdg.stages.ocr:OcrStage",
        model="nemotron-parse",
    ),
    StageSpec(
        "text_qa",
        3,
        "qa",
        "Question/answer pairs from OCR text, judged for relevance and correctness",
        inputs=("ocr",),
        handler="longdoc_sdg.stages.text_qa:TextQaStage",
        model="gpt-oss-120b",
        unit="page",
        question_types="text",
        carries=("ocr", "transcribed_texts"),
    ),
    StageSpec(
        "classify",
        4,
        "classify",
        "Page classification into 8 categories / 45 subcategories (structured output)",
        inputs=("pages",),
        handler="longdoc_sdg.stages.classify:ClassifyStage",
        model="qwen3-vl-30b",
    ),
    StageSpec(
        "visual_qa",
        5,
        "qa",
        "Reasoning QA on pages with charts, tables, diagrams (question, answer, two checks)",
        inputs=("classify", "pages"),
        handler="longdoc_sdg.stages.visual_qa:VisualQaStage",
        model="qwen3-vl-235b-thinking",
        unit="page",
        question_types="visual",
        carries=("classify", "page_classification"),
    ),
    StageSpec(
        "single_page_qa",
        6,
        "qa",
        "Anchored QA on one page (unambiguous among all pages of its document)",
        inputs=("pages",),
        handler="longdoc_sdg.stages.anchored_qa:SinglePageQaStage",
        model="qwen3-vl-235b-thinking",
        unit="page",
        question_types="anchored",
    ),
    StageSpec(
        "windowed_qa",
        7,
        "qa",
        "QA needing at least two pages of a window of consecutive pages",
        inputs=("documents", "pages"),
        handler="longdoc_sdg.stages.anchored_qa:WindowedQaStage",
        model="qwen3-vl-235b-thinking",
        unit="window",
        question_types="anchored",
    ),
    StageSpec(
        "whole_document_qa",
        8,
        "qa",
        "QA over all pages of a document (needs 2+ pages, 4-8 preferred)",
        inputs=("documents", "pages"),
        handler="longdoc_sdg.stages.anchored_qa:WholeDocumentQaStage",
        model="qwen3-vl-235b-thinking",
        unit="document",
        question_types="anchored",
    ),
    StageSpec(
        "judge",
        9,
        "judge",
        "Five-criterion rubric judge (0-5 each) with a weighted quality score",
        inputs=(JUDGED_INPUT, "pages"),
        handler="longdoc_sdg.stages.judge:JudgeStage",
        model="judge",
    ),
    StageSpec(
        "verify",
        10,
        "verify",
        "Independent re-answer of each QA row from its pages, scored by the benchmark's rules",
        inputs=(JUDGED_INPUT, "pages"),
        handler="longdoc_sdg.stages.verify:VerifyStage",
        model="judge",
        enabled_by_default=False,
    ),
    StageSpec(
        "evaluate",
        11,
        "evaluate",
        "Answers a benchmark's questions (MMLongBench-Doc layout) from their documents' pages",
        inputs=("samples", "documents", "pages"),
        handler="longdoc_sdg.stages.evaluate:EvaluateStage",
        in_workflow=False,
    ),
)


def get_spec(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def model_stages() -> tuple[str, ...]:
    """The workflow's stages with a row handler (everything after the seed), in pipeline order."""
    return tuple(s.name for s in STAGES if s.handler and s.in_workflow)


def handler_stages() -> tuple[str, ...]:
    """Every stage with a row handler, those run by their own command (evaluate) included."""
    return tuple(s.name for s in STAGES if s.handler)


def qa_stages() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES if s.is_qa)


def judge_stage() -> str:
    return next(s.name for s in STAGES if s.kind == "judge")


def stage_order() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


_HANDLERS: dict[str, object] = {}


def load_handler(name: str):
    """The stage's row handler (a stages.base.Stage), built once per process."""
    handler = _HANDLERS.get(name)
    if handler is None:
        spec = get_spec(name)
        if not spec.handler:
            raise ValueError(f"stage {name} has no row handler (it has its own rule)")
        module_name, _, class_name = spec.handler.partition(":")
        handler = getattr(importlib.import_module(module_name), class_name)(spec)
        _HANDLERS[name] = handler
    return handler
