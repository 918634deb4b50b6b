"""Stage 04: does a page hold visual material worth reasoning over, and of which kind?"""

from __future__ import annotations

import json
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from ..ids import RowId
from ..pages import iter_page_meta
from ..taxonomy import (
    CATEGORY_HINTS,
    SUBCATEGORIES,
    Category,
    NoneSubcategory,
    ReasoningCategory,
    ReasoningSubcategory,
)
from .base import (
    ModelStageConfig,
    Plan,
    RowCalls,
    RowTask,
    SamplingConfig,
    Stage,
    StageContext,
    StageOutput,
    select_records,
    user_message,
)


def _dedupe(values: list) -> list:
    # Repeats carry no information; keep the first occurrence so the order (priority) stays.
    return list(dict.fromkeys(values))


class _PageShape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("primary_categories", "subcategories", mode="after", check_fields=False)
    @classmethod
    def _unique(cls, value: list) -> list:
        return _dedupe(value)


class ReasoningPage(_PageShape):
    primary_categories: list[ReasoningCategory] = Field(min_length=1, max_length=3)
    subcategories: list[ReasoningSubcategory] = Field(max_length=12)
    contains_reasoning_content: Literal[True]
    reasoning_complexity_score: int = Field(ge=1, le=10)
    justification: str = Field(max_length=600)


class NonePage(_PageShape):
    primary_categories: list[Literal["NONE"]] = Field(min_length=1, max_length=1)
    subcategories: list[NoneSubcategory] = Field(max_length=5)
    contains_reasoning_content: Literal[False]
    reasoning_complexity_score: int = Field(ge=1, le=10)
    justification: str = Field(max_length=600)


class PageClassification(RootModel[Union[ReasoningPage, NonePage]]):
    """Either reasoning categories (flag true) or exactly [NONE] (flag false).

    Declaring the two shapes in the schema means guided decoding cannot produce NONE next to
    another category or a flag that contradicts the categories; validation rejects it anyway
    when the server does not enforce the schema.
    """


def classification_dict(parsed: PageClassification) -> dict:
    page = parsed.root
    return {
        "contains_reasoning_content": page.contains_reasoning_content,
        "primary_categories": [getattr(c, "value", c) for c in page.primary_categories],
        "subcategories": [getattr(s, "value", s) for s in page.subcategories],
        "reasoning_complexity_score": page.reasoning_complexity_score,
        "justification": page.justification.strip(),
    }


class ClassifyConfig(ModelStageConfig):
    max_tokens: int = Field(2048, ge=1, description="Completion token budget per page.")
    sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.0), description="Sampling (greedy by default: a label, not prose)."
    )
    prompt_template: str = Field("classify.j2", description="Prompt template of the classification call.")


class ClassifyOutput(StageOutput):
    page_classification: str = Field(
        description="JSON {contains_reasoning_content, primary_categories, subcategories, "
        "reasoning_complexity_score, justification}."
    )
    contains_reasoning_content: bool = Field(description="False exactly when the categories are [NONE].")
    primary_categories: str = Field(description="JSON list of up to 3 categories, most important first.")
    reasoning_complexity_score: int = Field(description="1 (trivial) to 10 (many careful steps).")


class ClassifyStage(Stage):
    config_model = ClassifyConfig
    output_model = ClassifyOutput
    response_models = (PageClassification,)

    def plan(self, config: ClassifyConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["pages"]

        def ids():
            for row in iter_page_meta(path):
                yield row["doc_id"], str(RowId.page(self.name, row["doc_id"], int(row["page_number"])))

        chosen = select_records(ids(), config.num_records, config.seed, shuffled=False)
        expected = [i for _, i in ids() if chosen is None or i in chosen]

        def tasks():
            for row in iter_page_meta(path):
                row_id = str(RowId.page(self.name, row["doc_id"], int(row["page_number"])))
                if chosen is None or row_id in chosen:
                    yield RowTask(row_id, row["doc_id"], [int(row["page_number"])])

        return Plan(expected, tasks)

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: ClassifyConfig = ctx.config
        pages = ctx.pages(task.doc_id, task.pages)
        prompt = ctx.templates["prompt_template"].render(
            categories=[(c, SUBCATEGORIES[c]) for c in Category], hints=CATEGORY_HINTS
        )
        result = await calls.chat(
            user_message([*ctx.image_parts(pages), {"type": "text", "text": prompt}]),
            response_model=PageClassification,
            sampling=cfg.sampling.to_request(),
            max_tokens=cfg.max_tokens,
        )
        data = classification_dict(result.parsed)
        return {
            "page_classification": json.dumps(data, ensure_ascii=False),
            "contains_reasoning_content": data["contains_reasoning_content"],
            "primary_categories": json.dumps(data["primary_categories"]),
            "reasoning_complexity_score": data["reasoning_complexity_score"],
        }
