"""Verify: answer each generated question again, independently, and score the agreement.

A second call sees the question and the same pages only (never the generated answer or the
reasoning behind it). Its reply's final "Answer:" line is taken as it is when it is a well-formed
answer of the question's format; otherwise an extractor call (our own prompt) pulls the answer
out. The `fixed` MMLongBench-Doc scorer then compares it with the generated answer under the
question type's benchmark format (taxonomy.QUESTION_TYPE_FORMATS): `verify_score` 0-1.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from ..ids import RowId
from ..registry import get_spec, qa_stages
from ..score import NOT_ANSWERABLE, is_not_answerable, score_answer
from ..taxonomy import AnswerFormat, benchmark_format, find_type
from ..validators import validate_answer
from .base import (
    ModelStageConfig,
    RowCalls,
    RowTask,
    SamplingConfig,
    StageContext,
    StageOutput,
    no_hash,
    user_message,
)
from .judge import QaReviewStage

NO_ANSWER = "No answer"

# How the extractor is told to write an answer of each format (the answering prompt has its own).
EXTRACT_HINTS = {
    AnswerFormat.MULTIPLE_CHOICE: 'the option letter, a dot, a space and the option text, e.g. "B. 42 units"',
    AnswerFormat.YES_NO: '"Yes" or "No"',
    AnswerFormat.TRUE_FALSE: '"True" or "False"',
    AnswerFormat.INT: "a whole number, digits only",
    AnswerFormat.FLOAT: "a decimal number without units",
    AnswerFormat.PERCENT: "a number followed by %",
    AnswerFormat.NUMBER: "a bare number (a % sign for a percentage)",
    AnswerFormat.LIST: 'a one-line JSON array, e.g. ["a", "b"]',
    AnswerFormat.SHORT_TEXT: "the answer's words, on one line",
    AnswerFormat.NOT_ANSWERABLE: "the answer's words, on one line",
}

_ANSWER_LINE = re.compile(r"^[\s*#>_-]*answer[\s*_]*:[\s*_]*(.*?)[\s*_]*$", re.IGNORECASE | re.MULTILINE)
_EXTRACTED_LINE = re.compile(r"^[\s*_]*extracted answer[\s*_]*:[\s*_]*(.*?)[\s*_]*$", re.IGNORECASE | re.MULTILINE)
_OPTION_LETTER = re.compile(r"\(?([A-Z])(?:[.)]|\s|$)")


# constrain_output: vLLM regex grammars that make any model's replies end (tiny test models).
ANSWER_REGEX = r"Answer: [^\n]{1,60}"
EXTRACT_REGEX = r"Extracted answer: [^\n]{1,60}"


def _sampling() -> SamplingConfig:
    return SamplingConfig(temperature=0.0)


class VerifyConfig(ModelStageConfig):
    max_tokens: int = Field(
        4096, ge=1, description="Completion token budget of the answering call (reasoning included)."
    )
    extract_max_tokens: int = Field(256, ge=1, description="Completion token budget of the extractor call.")
    sampling: SamplingConfig = Field(
        default_factory=_sampling,
        description="Sampling of both calls (greedy by default, as the benchmark's extractor).",
    )
    extract: Literal["auto", "always", "never"] = Field(
        "auto",
        description="'auto': call the extractor only when the reply's last 'Answer:' line is not a well-formed "
        "answer of the question's format; 'always': every row; 'never': take that line (or the last line) as it is.",
    )
    only_format_ok: bool = Field(
        True, description="Verify only rows whose generated answer passed its format check (format_ok)."
    )
    constrain_output: bool = Field(
        False,
        description="Ask vLLM to hold both replies to one 'Answer:' / 'Extracted answer:' line with a regex "
        "grammar (structured_outputs.regex). For models that never stop.",
    )
    answer_template: str = Field("verify_answer.j2", description="Prompt template of the answering call.")
    extract_template: str = Field("verify_extract.j2", description="Prompt template of the extractor call.")
    verify_stages: list[str] = Field(
        default_factory=lambda: list(qa_stages()),
        description="QA stages the workflow verifies (read by the workflow; one job verifies one stage's shard).",
        **no_hash(),
    )


class VerifyOutput(StageOutput):
    qa_row_id: str = Field(description="row_id of the verified QA row.")
    qa_stage: str = Field(description="The QA stage the verified row came from.")
    question_type: str = Field(description="Question type of the verified row.")
    benchmark_format: str = Field(description="MMLongBench-Doc answer format the two answers are compared under.")
    verify_reply: str | None = Field(description="The independent answering call's reply.")
    verify_answer: str = Field(description="The independent answer (from the reply, or extracted from it).")
    verify_extracted: bool = Field(description="The extractor call produced verify_answer.")
    verify_score: float = Field(
        description="fixed-mode benchmark score of verify_answer against the generated answer (0-1)."
    )


def last_answer_line(reply: str | None, pattern: re.Pattern = _ANSWER_LINE) -> str | None:
    """The text after the reply's last "Answer:" marker (markdown emphasis aside)."""
    matches = [m.group(1).strip() for m in pattern.finditer(reply or "")]
    matches = [m for m in matches if m]
    return matches[-1] if matches else None


def well_formed(answer: str | None, fmt: AnswerFormat, question: str) -> bool:
    """A usable answer as it is: a refusal, or an answer passing the format's check (for the
    not-answerable type: any short one-line text, since the verifier may well answer it)."""
    if answer is None:
        return False
    if is_not_answerable(answer):
        return True
    check = AnswerFormat.SHORT_TEXT if fmt is AnswerFormat.NOT_ANSWERABLE else fmt
    return validate_answer(check, answer, question)[0]


def comparable(answer: str, fmt: AnswerFormat) -> str:
    """Multiple choice is compared by option letter ("B" agrees with "B. 42 units")."""
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        m = _OPTION_LETTER.match(answer.strip())
        if m:
            return m.group(1)
    return answer


def verify_score(generated: str, independent: str, fmt: AnswerFormat, benchmark: str) -> float:
    if is_not_answerable(independent):
        independent = NOT_ANSWERABLE
    return score_answer(comparable(generated, fmt), comparable(independent, fmt), benchmark, "fixed")


class VerifyStage(QaReviewStage):
    config_model = VerifyConfig
    output_model = VerifyOutput

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: VerifyConfig = ctx.config
        qa_row_id = task.data["row_id"]
        qa_stage = RowId.parse(qa_row_id).stage
        question, generated = task.data["question"], task.data["answer"]
        qtype = find_type(task.data["question_type"], get_spec(qa_stage).question_types)
        fmt = qtype.answer_format if qtype else AnswerFormat.SHORT_TEXT
        benchmark = benchmark_format(task.data["question_type"], generated) or "Str"
        sampling = cfg.sampling.to_request()

        images = ctx.page_images(task.doc_id, task.pages, labelled=len(task.pages) > 1)
        prompt = ctx.templates["answer_template"].render(question=question, answer_format=fmt.value, pages=task.pages)
        result = await calls.chat(
            user_message([*images, {"type": "text", "text": prompt}]),
            sampling={**sampling, "structured_outputs": {"regex": ANSWER_REGEX}} if cfg.constrain_output else sampling,
            max_tokens=cfg.max_tokens,
        )
        reply = result.content or ""
        answer = last_answer_line(reply)
        extracted = False
        if cfg.extract == "always" or (cfg.extract == "auto" and not well_formed(answer, fmt, question)):
            extract_prompt = ctx.templates["extract_template"].render(
                question=question, reply=reply.strip() or "(empty)", hint=EXTRACT_HINTS[fmt]
            )
            extraction = await calls.chat(
                user_message(extract_prompt),
                sampling={**sampling, "structured_outputs": {"regex": EXTRACT_REGEX}}
                if cfg.constrain_output
                else sampling,
                max_tokens=cfg.extract_max_tokens,
            )
            answer = last_answer_line(extraction.content, _EXTRACTED_LINE) or _last_line(extraction.content)
            extracted = True
        elif answer is None:
            answer = _last_line(reply)
        if answer is None or answer == NO_ANSWER:
            answer = ""
        return {
            "qa_row_id": qa_row_id,
            "qa_stage": qa_stage,
            "question_type": task.data["question_type"],
            "benchmark_format": benchmark,
            "verify_reply": reply,
            "verify_answer": answer,
            "verify_extracted": extracted,
            "verify_score": verify_score(generated, answer, fmt, benchmark) if answer else 0.0,
        }


def _last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None
