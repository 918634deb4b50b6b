"""Stage 05: one-step reasoning questions on pages classified as holding visual material."""

from __future__ import annotations

import json

from pydantic import Field, field_validator

from ..ids import RowId
from ..taxonomy import DEFAULT_WEIGHTS, VISUAL_TYPES, find_type
from ..validators import validate_answer
from .base import (
    ModelStageConfig,
    Plan,
    RowCalls,
    RowTask,
    SamplingConfig,
    Stage,
    StageContext,
    StageFailure,
    StageOutput,
    check_weights,
    gather_or_cancel,
    iter_rows,
    sample_question_type,
    select_records,
    user_message,
)
from .checks import CorrectnessVerdict, RelevanceVerdict
from .replies import clean_answer, clean_question

THINKING_SAMPLING = SamplingConfig(temperature=1.0, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=1.5)


class VisualQaConfig(ModelStageConfig):
    question_type_weights: dict[str, float] = Field(
        DEFAULT_WEIGHTS["visual_qa"],
        description=f"Relative weight of each question type; keys left out keep their default, 0 drops a type ({', '.join(t.key for t in VISUAL_TYPES)}).",
    )
    questions_per_record: int = Field(1, ge=1, description="Questions generated per classified page.")
    min_reasoning_complexity: int = Field(
        1, ge=1, le=10, description="Pages classified below this complexity are skipped by the filter."
    )
    max_tokens: int = Field(16384, ge=1, description="Completion token budget per request (reasoning included).")
    sampling: SamplingConfig = Field(THINKING_SAMPLING, description="Sampling of the question and answer calls.")
    check_sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0),
        description="Sampling of the relevance and correctness calls (calmer: they are judgements).",
    )
    question_template: str = Field("visual_qa_question.j2", description="Prompt that writes the question.")
    answer_template: str = Field("visual_qa_answer.j2", description="Prompt that answers it from the page.")
    relevance_template: str = Field("visual_qa_relevance.j2", description="Prompt that judges question relevance.")
    correctness_template: str = Field("visual_qa_correctness.j2", description="Prompt that judges answer correctness.")

    @field_validator("question_type_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        return check_weights(value, VISUAL_TYPES)


class VisualQaOutput(StageOutput):
    question_type: str = Field(description="Sampled question type key.")
    question: str
    answer: str
    reasoning: str | None = Field(description="The answer call's reasoning trace (thinking models).")
    question_relevance: str = Field(description="Relevant | Irrelevant")
    question_relevance_reason: str
    answer_correctness: str = Field(description="Correct | Incorrect")
    answer_correctness_reason: str
    page_categories: str = Field(description="JSON list of the page's primary categories (from classify).")
    format_ok: bool = Field(description="The answer follows its question type's format.")
    format_reason: str = Field(description="'ok' or the first format problem found.")


class VisualQaStage(Stage):
    config_model = VisualQaConfig
    output_model = VisualQaOutput
    response_models = (RelevanceVerdict, CorrectnessVerdict)

    def plan(self, config: VisualQaConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["classify"]
        columns = [
            "row_id",
            "doc_id",
            "pages",
            "status",
            "contains_reasoning_content",
            "reasoning_complexity_score",
            "page_classification",
        ]

        def eligible():
            for row in iter_rows(path, columns):
                if (
                    row["status"] == "ok"
                    and row["contains_reasoning_content"]
                    and (row["reasoning_complexity_score"] or 0) >= config.min_reasoning_complexity
                ):
                    yield row

        chosen = select_records(
            ((r["doc_id"], r["row_id"]) for r in eligible()), config.num_records, config.seed, False
        )

        def tasks():
            for row in eligible():
                if chosen is not None and row["row_id"] not in chosen:
                    continue
                base = RowId.parse(row["row_id"]).for_stage(self.name)
                for row_id in map(str, base.questions(config.questions_per_record)):
                    data = {
                        "classification": json.loads(row["page_classification"]),
                        "question_type": sample_question_type(config.question_type_weights, row_id, config.seed),
                    }
                    yield RowTask(row_id, row["doc_id"], list(row["pages"] or []), data)

        expected = [t.row_id for t in tasks()]
        return Plan(expected, tasks)

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: VisualQaConfig = ctx.config
        qtype = find_type(task.data["question_type"], "visual")
        classification = task.data["classification"]
        images = ctx.page_images(task.doc_id, task.pages)

        def with_images(text: str) -> list[dict]:
            return user_message([*images, {"type": "text", "text": text}])

        sampling = cfg.sampling.to_request()
        prompt = ctx.templates["question_template"].render(qtype=qtype, classification=classification)
        asked = await calls.chat(with_images(prompt), sampling=sampling, max_tokens=cfg.max_tokens)
        question = clean_question(asked.content or "")
        if not question:
            raise StageFailure("empty_question", "the question call returned no question")

        answer_prompt = ctx.templates["answer_template"].render(question=question)
        answered = await calls.chat(with_images(answer_prompt), sampling=sampling, max_tokens=cfg.max_tokens)
        answer = clean_answer(answered.content or "")
        if not answer:
            raise StageFailure("empty_answer", "the answer call returned no answer")

        checks = cfg.check_sampling.to_request()
        relevance, correctness = await gather_or_cancel(
            calls.chat(
                with_images(ctx.templates["relevance_template"].render(question=question)),
                response_model=RelevanceVerdict,
                sampling=checks,
                max_tokens=cfg.max_tokens,
            ),
            calls.chat(
                with_images(ctx.templates["correctness_template"].render(question=question, answer=answer)),
                response_model=CorrectnessVerdict,
                sampling=checks,
                max_tokens=cfg.max_tokens,
            ),
        )
        ok, reason = validate_answer(qtype.answer_format, answer, question)
        return {
            "question_type": qtype.key,
            "question": question,
            "answer": answer,
            "reasoning": answered.reasoning,
            "question_relevance": relevance.parsed.verdict,
            "question_relevance_reason": relevance.parsed.reason,
            "answer_correctness": correctness.parsed.verdict,
            "answer_correctness_reason": correctness.parsed.reason,
            "page_categories": json.dumps(classification.get("primary_categories", [])),
            "format_ok": ok,
            "format_reason": reason,
        }
