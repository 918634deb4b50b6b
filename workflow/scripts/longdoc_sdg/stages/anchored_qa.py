"""Stages 06/07/08: anchored QA over one page, a window of pages, or the whole document.

One call per item: the thinking model writes question, answer, evidence pages and a self-checked
quality score; its reasoning is kept in a separate column.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..engine.schema import response_format
from ..ids import RowId
from ..pages import iter_page_meta
from ..taxonomy import ANCHORED_TYPES, DEFAULT_WEIGHTS, find_type
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
    iter_rows,
    sample_question_type,
    select_records,
    user_message,
)
from .replies import (
    AnchoredReply,
    BadEvidence,
    ParseError,
    check_evidence,
    evidence_json,
    from_json_reply,
    json_reply_model,
    parse_tagged,
    tagged_regex,
)
from .windows import make_windows

TYPE_KEYS = ", ".join(t.key for t in ANCHORED_TYPES)


def _sampling() -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=1.5)


class AnchoredQaConfig(ModelStageConfig):
    questions_per_record: int = Field(1, ge=1, description="Questions generated per input record.")
    max_tokens: int = Field(16384, ge=1, description="Completion token budget per request (reasoning included).")
    sampling: SamplingConfig = Field(
        default_factory=_sampling,
        description="Sampling (reference: temperature 1.0, top_p 0.95, top_k 20, min_p 0, presence_penalty 1.5).",
    )
    output_format: Literal["tagged", "json"] = Field(
        "tagged",
        description="'tagged': free text with <question>/<answer>/<evidence_pages>/<quality_score> "
        "blocks (keeps JSON out of the thinking trace); 'json': a structured-output JSON object.",
    )
    constrain_output: bool = Field(
        False,
        description="With 'tagged', ask vLLM to enforce the layout with a regex grammar "
        "(structured_outputs.regex). Guarantees a parseable reply, e.g. from tiny test models.",
    )

    @field_validator("question_type_weights", check_fields=False)
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        return check_weights(value, ANCHORED_TYPES)


class SinglePageQaConfig(AnchoredQaConfig):
    question_type_weights: dict[str, float] = Field(
        DEFAULT_WEIGHTS["single_page_qa"],
        description=f"Relative weight of each question type; keys left out keep their default, 0 drops a type ({TYPE_KEYS}).",
    )
    min_evidence_pages: int = Field(1, ge=1, description="Evidence pages an item needs for evidence_ok.")
    prompt_template: str = Field("single_page_qa.j2", description="Prompt template of the generation call.")


class WindowedQaConfig(AnchoredQaConfig):
    question_type_weights: dict[str, float] = Field(
        DEFAULT_WEIGHTS["windowed_qa"],
        description=f"Relative weight of each question type; keys left out keep their default, 0 drops a type ({TYPE_KEYS}).",
    )
    min_evidence_pages: int = Field(2, ge=1, description="Evidence pages an item needs for evidence_ok.")
    prompt_template: str = Field("windowed_qa.j2", description="Prompt template of the generation call.")
    window_size: int | None = Field(
        None,
        ge=1,
        description="Fixed window size in pages; null = grow with document length: 2 up to 10 pages, 3 up to 20, "
        "... 7 up to 60, 8 beyond.",
    )
    window_stride: int | None = Field(
        None,
        ge=1,
        description="Pages between window starts; null = window size (no overlap). Never larger than the window "
        "size, so no page is skipped. The last window is shifted back to end on the last page.",
    )

    @model_validator(mode="after")
    def _stride_within_size(self) -> "WindowedQaConfig":
        if self.window_size is not None and self.window_stride is not None and self.window_stride > self.window_size:
            raise ValueError(
                f"window_stride ({self.window_stride}) must not exceed window_size ({self.window_size}): "
                "pages would be skipped"
            )
        return self


class WholeDocumentQaConfig(AnchoredQaConfig):
    question_type_weights: dict[str, float] = Field(
        DEFAULT_WEIGHTS["whole_document_qa"],
        description=f"Relative weight of each question type; keys left out keep their default, 0 drops a type ({TYPE_KEYS}).",
    )
    min_evidence_pages: int = Field(2, ge=1, description="Evidence pages an item needs for evidence_ok.")
    max_pages: int | None = Field(
        50,
        ge=1,
        description="Documents with more pages get no whole-document question (the reference skips them at 50); "
        "null: no limit.",
    )
    prompt_template: str = Field("whole_document_qa.j2", description="Prompt template of the generation call.")


class AnchoredQaOutput(StageOutput):
    question_type: str = Field(description="Sampled question type key.")
    question: str
    answer: str
    reasoning: str | None = Field(description="The model's reasoning trace, kept apart from the answer.")
    evidence_pages: str = Field(description="JSON list of the page numbers the model says it used.")
    evidence_ok: bool = Field(
        description="At least min_evidence_pages evidence pages (pages outside those shown fail the row as "
        "`bad_evidence`)."
    )
    quality_score: int = Field(description="Self-check: 0 a check failed, 1 all pass, 2 all pass + high-value signal.")
    format_ok: bool = Field(description="The answer follows its question type's format.")
    format_reason: str = Field(description="'ok' or the first format problem found.")


class _AnchoredStage(Stage):
    output_model = AnchoredQaOutput
    response_models = (AnchoredReply,)
    labelled_pages = True  # prefix every image with "Page N:"

    def render(self, ctx: StageContext, task: RowTask, qtype) -> str:
        raise NotImplementedError

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: AnchoredQaConfig = ctx.config
        qtype = find_type(task.data["question_type"], "anchored")
        images = ctx.page_images(task.doc_id, task.pages, labelled=self.labelled_pages)
        prompt = self.render(ctx, task, qtype)
        sampling = cfg.sampling.to_request()
        messages = user_message([*images, {"type": "text", "text": prompt}])
        if cfg.output_format == "json":
            # The grammar sent names only the pages shown; the reply is read with the open model.
            grammar = {"response_format": response_format(json_reply_model(tuple(task.pages)))}
            result = await calls.chat(
                messages, response_model=AnchoredReply, sampling=sampling, max_tokens=cfg.max_tokens, extra_body=grammar
            )
            item = from_json_reply(result.parsed)
        else:
            if cfg.constrain_output:
                sampling = {**sampling, "structured_outputs": {"regex": tagged_regex(task.pages)}}
            result = await calls.chat(messages, sampling=sampling, max_tokens=cfg.max_tokens)
            try:
                item = parse_tagged(result.content)
            except ParseError as exc:
                raise StageFailure("unparseable", f"{exc}; reply starts {(result.content or '')[:200]!r}") from None
        evidence = item["evidence_pages"]
        try:
            check_evidence(evidence, task.pages)
        except BadEvidence as exc:
            raise StageFailure("bad_evidence", str(exc)) from None
        evidence_ok = len(evidence) >= cfg.min_evidence_pages
        ok, reason = validate_answer(qtype.answer_format, item["answer"], item["question"])
        return {
            "question_type": qtype.key,
            "question": item["question"],
            "answer": item["answer"],
            "reasoning": result.reasoning,
            "evidence_pages": evidence_json(evidence),
            "evidence_ok": evidence_ok,
            "quality_score": item["quality_score"],
            "format_ok": ok,
            "format_reason": reason,
        }

    def render_common(self, ctx: StageContext, qtype, **context) -> str:
        return ctx.templates["prompt_template"].render(qtype=qtype, output_format=ctx.config.output_format, **context)


class SinglePageQaStage(_AnchoredStage):
    config_model = SinglePageQaConfig
    labelled_pages = False

    def plan(self, config: SinglePageQaConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["pages"]
        totals: dict[str, int] = {}
        for row in iter_page_meta(path):
            totals[row["doc_id"]] = totals.get(row["doc_id"], 0) + 1

        def keys():
            for row in iter_page_meta(path):
                yield str(RowId.page(self.name, row["doc_id"], int(row["page_number"])))

        # The reference samples single pages at random: a seeded hash rank, not file order.
        chosen = select_records(keys(), config.num_records, config.seed, shuffled=True)

        def tasks():
            for row in iter_page_meta(path):
                page = int(row["page_number"])
                base = RowId.page(self.name, row["doc_id"], page)
                if chosen is not None and str(base) not in chosen:
                    continue
                for row_id in map(str, base.questions(config.questions_per_record)):
                    qtype = sample_question_type(config.question_type_weights, row_id, config.seed)
                    data = {"question_type": qtype, "total_pages": totals[row["doc_id"]]}
                    yield RowTask(row_id, row["doc_id"], [page], data)

        return Plan([t.row_id for t in tasks()], tasks)

    def render(self, ctx, task, qtype) -> str:
        return self.render_common(ctx, qtype, page_number=task.pages[0], total_pages=task.data["total_pages"])


class WindowedQaStage(_AnchoredStage):
    config_model = WindowedQaConfig

    def window_id(self, window: dict) -> RowId:
        return RowId.window(self.name, window["doc_id"], window["start_page"], window["end_page"])

    def plan(self, config: WindowedQaConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["documents"]

        def eligible():
            # Each document's windows, in document order. A cross-page question needs two pages:
            # one-page windows (one-page documents) are skipped.
            for doc in iter_rows(path, ["doc_id", "total_pages"]):
                total = int(doc["total_pages"] or 0)
                if total < 1:
                    continue
                for window in make_windows(total, config.window_size, config.window_stride):
                    if window.window_size >= config.min_evidence_pages:
                        yield {
                            "doc_id": doc["doc_id"],
                            "start_page": window.start_page,
                            "end_page": window.end_page,
                            "total_pages": total,
                        }

        chosen = select_records(
            (str(self.window_id(r)) for r in eligible()),
            config.num_records,
            config.seed,
            shuffled=True,
        )

        def tasks():
            for row in eligible():
                base = self.window_id(row)
                if chosen is not None and str(base) not in chosen:
                    continue
                pages = list(range(int(row["start_page"]), int(row["end_page"]) + 1))
                for row_id in map(str, base.questions(config.questions_per_record)):
                    qtype = sample_question_type(config.question_type_weights, row_id, config.seed)
                    data = {"question_type": qtype, "total_pages": row["total_pages"]}
                    yield RowTask(row_id, row["doc_id"], pages, data)

        return Plan([t.row_id for t in tasks()], tasks)

    def render(self, ctx, task, qtype) -> str:
        return self.render_common(
            ctx, qtype, start_page=task.pages[0], end_page=task.pages[-1], total_pages=task.data["total_pages"]
        )


class WholeDocumentQaStage(_AnchoredStage):
    config_model = WholeDocumentQaConfig

    def plan(self, config: WholeDocumentQaConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["documents"]

        def eligible():
            for row in iter_rows(path, ["doc_id", "total_pages"]):
                total = int(row["total_pages"] or 0)
                enough = total >= config.min_evidence_pages  # the question must need 2+ pages
                if enough and (config.max_pages is None or total <= config.max_pages):
                    yield row

        chosen = select_records((r["doc_id"] for r in eligible()), config.num_records, config.seed, False)

        def tasks():
            for row in eligible():
                if chosen is not None and row["doc_id"] not in chosen:
                    continue
                pages = list(range(1, int(row["total_pages"]) + 1))
                for row_id in map(str, RowId.document(self.name, row["doc_id"]).questions(config.questions_per_record)):
                    qtype = sample_question_type(config.question_type_weights, row_id, config.seed)
                    yield RowTask(row_id, row["doc_id"], pages, {"question_type": qtype})

        return Plan([t.row_id for t in tasks()], tasks)

    def render(self, ctx, task, qtype) -> str:
        return self.render_common(ctx, qtype, total_pages=len(task.pages))
