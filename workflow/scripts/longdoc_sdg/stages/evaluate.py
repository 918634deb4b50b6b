"""Evaluate: answer a benchmark's questions (MMLongBench-Doc layout) with their documents' pages.

One row per sample of `samples.json`, in its order. The question goes to the model with the
document's pages, at most `max_images` of them: a longer document shows its first `max_images`
pages (the rule of the benchmark's own scripts, which send `pdf[:max_pages]`) and the prompt says
so. An extractor call (our prompt) reads the answer out of the free reply in the benchmark's
"Extracted answer: ... Answer format: ..." layout; `pred` is the text between the two markers,
as the benchmark's scorer takes it. A sample whose PDF was not seeded is a failed row.
"""

from __future__ import annotations

import json
import re

from pydantic import Field

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
    iter_rows,
    no_hash,
    user_message,
)

DEFAULT_MAX_IMAGES = 50
FAILED_EXTRACTION = "Failed to extract"  # the benchmark's pred when the markers are missing
# constrain_output: vLLM regex grammars that make any model's replies end (tiny test models).
ANSWER_REGEX = r"[^\n]{1,60}"
EXTRACT_REGEX = r"Extracted answer: [^\n]{1,60}\nAnswer format: (Integer|Float|String|List|None)"


def _sampling() -> SamplingConfig:
    return SamplingConfig(temperature=0.0)


class EvaluateConfig(ModelStageConfig):
    samples: str | None = Field(
        None,
        description="The benchmark's samples.json (MMLongBench-Doc layout) `snakemake evaluate` answers (read by "
        "the workflow: a rule input).",
        **no_hash(),
    )
    documents: str | None = Field(
        None,
        description="Folder of the benchmark's PDFs, named by the samples' doc_id (read by the workflow: the PDFs "
        "the samples name are rule inputs; a missing one is a failure row).",
        **no_hash(),
    )
    max_tokens: int = Field(1024, ge=1, description="Completion token budget of the answer (the benchmark's 1024).")
    extract_max_tokens: int = Field(
        256, ge=1, description="Completion token budget of the extractor (the benchmark's 256)."
    )
    sampling: SamplingConfig = Field(
        default_factory=_sampling, description="Sampling of both calls (greedy, as the benchmark's scripts)."
    )
    max_images: int | None = Field(
        None,
        ge=1,
        description=f"Pages shown per question; a longer document shows its first max_images pages. Null: the "
        f"deployment's image limit (--limit-mm-per-prompt), else {DEFAULT_MAX_IMAGES}.",
    )
    constrain_output: bool = Field(
        False,
        description="Ask vLLM to hold both replies to a short fixed layout with a regex grammar "
        "(structured_outputs.regex): a one-line answer, the extractor's two lines. For models that never stop.",
    )
    answer_template: str = Field("evaluate_answer.j2", description="Prompt template of the answer call.")
    extract_template: str = Field("evaluate_extract.j2", description="Prompt template of the extractor call.")


class EvaluateOutput(StageOutput):
    sample_index: int = Field(description="Position of the sample in samples.json (0-based).")
    benchmark_doc_id: str = Field(description="The sample's doc_id (its PDF's file name).")
    question: str
    response: str | None = Field(description="The model's free reply.")
    extracted_res: str | None = Field(description="The extractor's reply.")
    pred: str = Field(description="The extracted answer (the text between the two markers).")
    shown_pages: int = Field(description="How many of the document's pages the model saw.")


def extracted_answer(text: str | None) -> str:
    """The benchmark's reading: the text after "Extracted answer:" and before "Answer format:"."""
    if not text or "Extracted answer:" not in text:
        return FAILED_EXTRACTION
    return text.split("Answer format:")[0].split("Extracted answer:")[1].strip()


def read_samples(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        samples = json.load(handle)
    if not isinstance(samples, list):
        raise ValueError(f"{path}: expected a JSON list of samples")
    return samples


class EvaluateStage(Stage):
    config_model = EvaluateConfig
    output_model = EvaluateOutput

    def plan(self, config: EvaluateConfig, inputs: dict[str, str]) -> Plan:
        samples = read_samples(inputs["samples"])
        seeded: dict[str, tuple[str, int]] = {}
        for row in iter_rows(inputs["documents"], ["doc_id", "source", "total_pages"]):
            seeded[re.split(r"[\\/]", row["source"])[-1]] = (row["doc_id"], int(row["total_pages"]))
        limit = config.max_images or DEFAULT_MAX_IMAGES

        def tasks():
            for index, sample in enumerate(samples):
                name = str(sample.get("doc_id", ""))
                doc_id, total = seeded.get(name, ("", 0))
                pages = list(range(1, min(total, limit) + 1))
                data = {"index": index, "doc": name, "question": str(sample.get("question", "")), "total": total}
                yield RowTask(f"{self.name}:{index:05d}", doc_id, pages, data)

        return Plan([t.row_id for t in tasks()], tasks)

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: EvaluateConfig = ctx.config
        if not task.doc_id:
            raise StageFailure("missing_document", f"no seeded PDF named {task.data['doc']!r} in evaluate.documents")
        question = task.data["question"]
        images = ctx.page_images(task.doc_id, task.pages)
        prompt = ctx.templates["answer_template"].render(
            question=question,
            pages=task.pages,
            total_pages=task.data["total"],
            truncated=len(task.pages) < task.data["total"],
        )
        sampling = cfg.sampling.to_request()
        answer_sampling, extract_sampling = sampling, sampling
        if cfg.constrain_output:
            answer_sampling = {**sampling, "structured_outputs": {"regex": ANSWER_REGEX}}
            extract_sampling = {**sampling, "structured_outputs": {"regex": EXTRACT_REGEX}}
        # The benchmark's order: the question first, then the pages.
        reply = await calls.chat(
            user_message([{"type": "text", "text": prompt}, *images]),
            sampling=answer_sampling,
            max_tokens=cfg.max_tokens,
        )
        response = reply.content or ""
        extract_prompt = ctx.templates["extract_template"].render(
            question=question, reply=response.strip() or "(empty)"
        )
        extraction = await calls.chat(
            user_message(extract_prompt), sampling=extract_sampling, max_tokens=cfg.extract_max_tokens
        )
        return {
            "sample_index": task.data["index"],
            "benchmark_doc_id": task.data["doc"],
            "question": question,
            "response": response,
            "extracted_res": extraction.content,
            "pred": extracted_answer(extraction.content),
            "shown_pages": len(task.pages),
        }
