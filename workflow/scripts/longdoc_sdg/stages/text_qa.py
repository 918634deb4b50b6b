"""Stage 03: a question and answer from a page's OCR text, then relevance and correctness checks."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..ids import RowId
from ..taxonomy import DEFAULT_WEIGHTS, TEXT_TYPES, find_type
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
from .replies import clean_answer


class TextQaConfig(ModelStageConfig):
    question_type_weights: dict[str, float] = Field(
        DEFAULT_WEIGHTS["text_qa"],
        description=f"Relative weight of each question type; keys left out keep their default, 0 drops a type ({', '.join(t.key for t in TEXT_TYPES)}).",
    )
    questions_per_record: int = Field(1, ge=1, description="Questions generated per OCR page.")
    min_text_chars: int = Field(
        1,
        ge=1,
        description="Pages with less OCR text than this get no question: each is one failed row with reason "
        "`no_text` (image-only page) or `too_little_text`, sent to no model.",
    )
    max_text_chars: int = Field(20000, ge=100, description="OCR text beyond this many characters is cut off.")
    max_tokens: int = Field(16384, ge=1, description="Completion token budget per request (reasoning included).")
    sampling: SamplingConfig = Field(
        SamplingConfig(reasoning_effort="high"),
        description="Sampling of the three calls (the reference runs gpt-oss-120b with high reasoning effort).",
    )
    question_template: str = Field("text_qa_question.j2", description="Prompt that writes the question and answer.")
    relevance_template: str = Field("text_qa_relevance.j2", description="Prompt that judges question relevance.")
    correctness_template: str = Field("text_qa_correctness.j2", description="Prompt that judges answer correctness.")

    @field_validator("question_type_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        return check_weights(value, TEXT_TYPES)


class QuestionAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=1500)
    answer: str = Field(max_length=300)


class TextQaOutput(StageOutput):
    question_type: str = Field(description="Sampled question type key.")
    question_and_answer: str = Field(description="JSON {question, answer} as generated.")
    question: str
    answer: str
    question_relevance: str = Field(description="Relevant | Irrelevant")
    question_relevance_reason: str
    answer_correctness: str = Field(description="Correct | Incorrect")
    answer_correctness_reason: str
    format_ok: bool = Field(description="The answer follows its question type's format.")
    format_reason: str = Field(description="'ok' or the first format problem found.")


class TextQaStage(Stage):
    config_model = TextQaConfig
    output_model = TextQaOutput
    response_models = (QuestionAnswer, RelevanceVerdict, CorrectnessVerdict)

    def plan(self, config: TextQaConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["ocr"]
        columns = ["row_id", "doc_id", "pages", "status", "transcribed_texts"]

        def ok_rows():
            for row in iter_rows(path, columns):
                if row["status"] == "ok":
                    yield row

        def has_text(row) -> bool:
            return len((row["transcribed_texts"] or "").strip()) >= config.min_text_chars

        chosen = select_records(
            ((r["doc_id"], r["row_id"]) for r in ok_rows() if has_text(r)), config.num_records, config.seed, False
        )

        def tasks():
            for row in ok_rows():
                pages = list(row["pages"] or [])
                if not has_text(row):
                    # Recorded, not dropped: the report counts what could not be asked about.
                    chars = len((row["transcribed_texts"] or "").strip())
                    skip = {
                        "skip": "no_text" if chars == 0 else "too_little_text",
                        "chars": chars,
                        "source_row_id": row["row_id"],
                    }
                    row_id = str(RowId.parse(row["row_id"]).for_stage(self.name).questions(1)[0])
                    yield RowTask(row_id, row["doc_id"], pages, skip)
                    continue
                if chosen is not None and row["row_id"] not in chosen:
                    continue
                for row_id in map(
                    str, RowId.parse(row["row_id"]).for_stage(self.name).questions(config.questions_per_record)
                ):
                    qtype = sample_question_type(config.question_type_weights, row_id, config.seed)
                    data = {"text": row["transcribed_texts"], "question_type": qtype, "source_row_id": row["row_id"]}
                    yield RowTask(row_id, row["doc_id"], pages, data)

        expected = [t.row_id for t in tasks()]
        return Plan(expected, tasks)

    def needs_endpoint(self, config) -> bool:
        return True

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: TextQaConfig = ctx.config
        if "skip" in task.data:
            why = (
                "OCR found no text on the page (no text layer: a scan or an image-only page)"
                if task.data["skip"] == "no_text"
                else f"OCR text has {task.data['chars']} characters, fewer than min_text_chars={cfg.min_text_chars}"
            )
            raise StageFailure(task.data["skip"], f"{task.data['source_row_id']}: {why}; no question asked")
        qtype = find_type(task.data["question_type"], "text")
        text = task.data["text"].strip()[: cfg.max_text_chars]
        page_number = task.pages[0] if task.pages else "?"
        sampling = cfg.sampling.to_request()

        prompt = ctx.templates["question_template"].render(qtype=qtype, text=text, page_number=page_number)
        generated = await calls.chat(
            user_message(prompt), response_model=QuestionAnswer, sampling=sampling, max_tokens=cfg.max_tokens
        )
        qa: QuestionAnswer = generated.parsed
        question, answer = qa.question.strip(), clean_answer(qa.answer)
        if not question:
            raise StageFailure("empty_question", "the model returned an empty question")

        relevance_prompt = ctx.templates["relevance_template"].render(text=text, question=question)
        correctness_prompt = ctx.templates["correctness_template"].render(text=text, question=question, answer=answer)
        # The two checks are independent: run them side by side.
        relevance, correctness = await gather_or_cancel(
            calls.chat(
                user_message(relevance_prompt),
                response_model=RelevanceVerdict,
                sampling=sampling,
                max_tokens=cfg.max_tokens,
            ),
            calls.chat(
                user_message(correctness_prompt),
                response_model=CorrectnessVerdict,
                sampling=sampling,
                max_tokens=cfg.max_tokens,
            ),
        )
        ok, reason = validate_answer(qtype.answer_format, answer, question)
        return {
            "question_type": qtype.key,
            "question_and_answer": json.dumps({"question": question, "answer": answer}, ensure_ascii=False),
            "question": question,
            "answer": answer,
            "question_relevance": relevance.parsed.verdict,
            "question_relevance_reason": relevance.parsed.reason,
            "answer_correctness": correctness.parsed.verdict,
            "answer_correctness_reason": correctness.parsed.reason,
            "format_ok": ok,
            "format_reason": reason,
        }
