"""Stage 09: a rubric judge over any QA stage's rows, looking at the pages they are about."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from ..ids import RowId
from ..registry import get_spec, qa_stages
from ..taxonomy import JUDGE_RUBRIC, find_type, weighted_quality_score
from .base import (
    ModelStageConfig,
    Plan,
    RowCalls,
    RowTask,
    SamplingConfig,
    Stage,
    StageContext,
    StageOutput,
    iter_rows,
    no_hash,
    select_records,
    user_message,
)


class RubricScore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(max_length=600)  # first: the score should follow from the stated reason
    score: int = Field(ge=0, le=5)


# One field per rubric item, in rubric order (weights live in taxonomy.JUDGE_RUBRIC).
JudgeVerdict = create_model(
    "JudgeVerdict",
    __config__=ConfigDict(extra="forbid"),
    **{item.key: (RubricScore, Field(description=item.label)) for item in JUDGE_RUBRIC},
)


class JudgeConfig(ModelStageConfig):
    max_tokens: int = Field(8192, ge=1, description="Completion token budget per judged item.")
    sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.0), description="Sampling of the judge (greedy by default)."
    )
    only_format_ok: bool = Field(False, description="Judge only rows whose answer passed the format check (format_ok).")
    show_images: bool = Field(True, description="Send the pages of each item to the judge.")
    prompt_template: str = Field("judge.j2", description="Prompt template of the judge call.")
    judge_stages: list[str] = Field(
        default_factory=lambda: list(qa_stages()),
        description="QA stages the workflow sends to the judge (read by the workflow; one job judges one stage's shard).",
        **no_hash(),
    )

    @field_validator("judge_stages")
    @classmethod
    def _known_qa_stages(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in qa_stages()]
        if unknown:
            raise ValueError(f"{unknown} are not QA stages; choose from {list(qa_stages())}")
        return value


def _rubric_fields() -> dict:
    return {
        f"{item.key}_score": (int, Field(description=f"{item.label}, 0-5 (weight {item.weight})."))
        for item in JUDGE_RUBRIC
    }


JudgeOutput = create_model(
    "JudgeOutput",
    __base__=StageOutput,
    qa_row_id=(str, Field(description="row_id of the judged QA row.")),
    qa_stage=(str, Field(description="The QA stage the judged row came from.")),
    question_type=(str, Field(description="Question type of the judged row.")),
    qa_quality_judge=(str, Field(description="JSON: {criterion: {score, reason}} for the five criteria.")),
    **_rubric_fields(),
    weighted_quality_score=(float, Field(description="Σ(score × weight) / 5, rounded to 2 decimals (0-1).")),
)


class QaReviewStage(Stage):
    """A stage that reviews the ok rows of one QA stage (the judge, verify): one task per row,
    sampled by `num_records`, the row id derived from the QA row's."""

    def plan(self, config, inputs: dict[str, str]) -> Plan:
        import pyarrow.parquet as pq

        path = inputs["qa"]
        names = set(pq.ParquetFile(path).schema_arrow.names)
        columns = ["row_id", "doc_id", "pages", "status", "question_type", "question", "answer"]
        if "format_ok" in names:
            columns.append("format_ok")

        def eligible():
            for row in iter_rows(path, columns):
                if row["status"] != "ok":
                    continue
                if config.only_format_ok and row.get("format_ok") is False:
                    continue
                yield row

        chosen = select_records((r["row_id"] for r in eligible()), config.num_records, config.seed, False)

        def tasks():
            for row in eligible():
                if chosen is not None and row["row_id"] not in chosen:
                    continue
                data = {k: row[k] for k in ("row_id", "question_type", "question", "answer")}
                row_id = str(RowId.parse(row["row_id"]).judged_by(self.name))
                yield RowTask(row_id, row["doc_id"], list(row["pages"] or []), data)

        return Plan([t.row_id for t in tasks()], tasks)


class JudgeStage(QaReviewStage):
    config_model = JudgeConfig
    output_model = JudgeOutput
    response_models = (JudgeVerdict,)

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: JudgeConfig = ctx.config
        qa_row_id = task.data["row_id"]
        qa_stage = RowId.parse(qa_row_id).stage
        qtype = find_type(task.data["question_type"], get_spec(qa_stage).question_types)
        prompt = ctx.templates["prompt_template"].render(
            qtype_label=qtype.label if qtype else task.data["question_type"],
            format_hint=qtype.format_hint if qtype else "",
            question=task.data["question"],
            answer=task.data["answer"],
            pages=task.pages,
            rubric=JUDGE_RUBRIC,
        )
        parts: list[dict] = []
        if cfg.show_images and task.pages:
            parts = ctx.page_images(task.doc_id, task.pages, labelled=len(task.pages) > 1)
        result = await calls.chat(
            user_message([*parts, {"type": "text", "text": prompt}]),
            response_model=JudgeVerdict,
            sampling=cfg.sampling.to_request(),
            max_tokens=cfg.max_tokens,
        )
        verdict = result.parsed
        scores = {item.key: getattr(verdict, item.key).score for item in JUDGE_RUBRIC}
        details = {
            item.key: {"score": scores[item.key], "reason": getattr(verdict, item.key).reason.strip()}
            for item in JUDGE_RUBRIC
        }
        return {
            "qa_row_id": qa_row_id,
            "qa_stage": qa_stage,
            "question_type": task.data["question_type"],
            "qa_quality_judge": json.dumps(details, ensure_ascii=False),
            **{f"{k}_score": v for k, v in scores.items()},
            "weighted_quality_score": weighted_quality_score(scores),
        }
