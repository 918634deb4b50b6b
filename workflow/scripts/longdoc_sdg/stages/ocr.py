"""Stage 02: page text with element boxes, from the PDF's text layer or from Nemotron-Parse."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from .. import nemotron_parse
from ..ids import RowId
from ..pages import iter_page_meta
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
    select_records,
)

PDF_TEXT_MODEL = "pdf-text"


class OcrConfig(ModelStageConfig):
    engine: Literal["pdf-text", "nemotron-parse", "auto"] = Field(
        "pdf-text",
        description="'pdf-text' reads the seed's PDF text layer (no model, no GPU); 'nemotron-parse' "
        "sends each page image to a Nemotron-Parse endpoint; 'auto' sends only the pages without a "
        "text layer (scans) to Nemotron-Parse and reads the rest from the text layer.",
    )
    max_tokens: int = Field(8000, ge=1, description="Completion token budget per page (Nemotron-Parse).")
    sampling: SamplingConfig = Field(
        SamplingConfig(temperature=0.0, top_k=1, repetition_penalty=1.1, extra_body={"skip_special_tokens": False}),
        description="Nemotron-Parse sampling: greedy, mild repetition penalty, special tokens kept "
        "(the coordinate and class tags are special tokens).",
    )
    canvas_size: tuple[int, int] | None = Field(
        None,
        description="[width, height] of a padded canvas the model's coordinates refer to, if the "
        "serving stack pads pages (e.g. [1648, 2048]); null = coordinates are fractions of the page.",
    )
    pdf_text_class_label: str = Field(
        "Text", description="Class label given to text-layer blocks (the PDF has no layout classes)."
    )


class OcrOutput(StageOutput):
    ocr_engine: str = Field(description="'pdf-text' or 'nemotron-parse'.")
    transcribed_texts: str = Field(description="Element texts in reading order, joined by newlines.")
    transcribed_texts__metadata: str = Field(
        description="JSON list, one per element: {bbox: {x1, y1, x2, y2} (0-1 of the page) or null, class_label}."
    )
    num_elements: int = Field(description="Number of elements found on the page.")
    text_layer: str = Field(
        description="'text' when the PDF page has a text layer, 'none' for scanned / image-only pages."
    )


def _clamp(v) -> float:
    return round(min(1.0, max(0.0, float(v))), 5)


def has_text_layer(pdf_text: str | None, text_blocks: str | None) -> bool:
    """A page has a text layer when the PDF gives it any non-blank text."""
    if pdf_text and pdf_text.strip():
        return True
    try:
        blocks = json.loads(text_blocks) if text_blocks else []
    except ValueError:
        return False
    return isinstance(blocks, list) and any(isinstance(b, dict) and str(b.get("text") or "").strip() for b in blocks)


def pdf_text_columns(pdf_text: str | None, text_blocks: str | None, class_label: str = "Text") -> dict:
    """The seed's text layer in the OCR schema: one element per text block."""
    try:
        blocks = json.loads(text_blocks) if text_blocks else []
    except ValueError:
        blocks = []
    texts: list[str] = []
    metadata: list[dict] = []
    for block in blocks if isinstance(blocks, list) else []:
        text = str(block.get("text") or "").strip()
        bbox = block.get("bbox")
        if not text:
            continue
        box = None
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            x1, y1, x2, y2 = (_clamp(v) for v in bbox)
            box = {"x1": min(x1, x2), "y1": min(y1, y2), "x2": max(x1, x2), "y2": max(y1, y2)}
        texts.append(text)
        metadata.append({"bbox": box, "class_label": class_label})
    if not texts and pdf_text and pdf_text.strip():
        # Text layer without block geometry: keep the text, one element without a box.
        texts = [pdf_text.strip()]
        metadata = [{"bbox": None, "class_label": class_label}]
    return {
        "ocr_engine": PDF_TEXT_MODEL,
        "transcribed_texts": "\n".join(texts),
        "transcribed_texts__metadata": json.dumps(metadata, ensure_ascii=False),
        "num_elements": len(metadata),
        "text_layer": "text" if texts else "none",
    }


class OcrStage(Stage):
    config_model = OcrConfig
    output_model = OcrOutput

    def needs_endpoint(self, config: OcrConfig) -> bool:
        return config.engine in ("nemotron-parse", "auto")

    def serves_on_demand(self, config: OcrConfig) -> bool:
        return config.engine == "auto"

    def needs_endpoint_for(self, config: OcrConfig, inputs: dict[str, str]) -> bool:
        if config.engine != "auto":
            return self.needs_endpoint(config)
        # 'auto': only a page without a text layer needs Nemotron-Parse.
        return any(
            not has_text_layer(task.data.get("pdf_text"), task.data.get("text_blocks"))
            for task in self.plan(config, inputs).tasks()
        )

    def plan(self, config: OcrConfig, inputs: dict[str, str]) -> Plan:
        path = inputs["pages"]

        def ids():
            for row in iter_page_meta(path):
                yield row["doc_id"], str(RowId.page(self.name, row["doc_id"], int(row["page_number"])))

        chosen = select_records(ids(), config.num_records, config.seed, shuffled=False)
        expected = [i for _, i in ids() if chosen is None or i in chosen]
        # The text layer is read under every engine: it marks image-only pages.
        columns = ("doc_id", "page_number", "pdf_text", "text_blocks")

        def tasks():
            for row in iter_page_meta(path, columns=columns):
                row_id = str(RowId.page(self.name, row["doc_id"], int(row["page_number"])))
                if chosen is not None and row_id not in chosen:
                    continue
                yield RowTask(row_id, row["doc_id"], [int(row["page_number"])], row)

        return Plan(expected, tasks)

    def process_sync(self, task: RowTask, ctx: StageContext) -> dict:
        cfg: OcrConfig = ctx.config
        return pdf_text_columns(task.data.get("pdf_text"), task.data.get("text_blocks"), cfg.pdf_text_class_label)

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        cfg: OcrConfig = ctx.config
        text_layer = has_text_layer(task.data.get("pdf_text"), task.data.get("text_blocks"))
        if cfg.engine == "auto" and text_layer:
            # Only pages without a text layer need the model.
            return {**self.process_sync(task, ctx), "model": PDF_TEXT_MODEL}
        (page,) = ctx.pages(task.doc_id, task.pages)
        messages = nemotron_parse.build_messages(ctx.image_parts([page])[0])
        sampling = {**nemotron_parse.REQUEST_SAMPLING, **cfg.sampling.to_request()}
        result = await calls.chat(messages, sampling=sampling, max_tokens=cfg.max_tokens)
        elements = nemotron_parse.parse_markup(
            result.content, canvas=cfg.canvas_size, page_size=(page.width, page.height)
        )
        if not elements and result.content and result.content.strip():
            raise StageFailure("unparseable", f"no elements in the reply: {result.content[:200]!r}")
        text, metadata = nemotron_parse.to_columns(elements)
        return {
            "ocr_engine": "nemotron-parse",
            "transcribed_texts": text,
            "transcribed_texts__metadata": json.dumps(metadata, ensure_ascii=False),
            "num_elements": len(elements),
            "text_layer": "text" if text_layer else "none",
        }
