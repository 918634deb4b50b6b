"""Helpers for the stage tests (no tests here): seed tables built from real PDFs, and a fake
server whose free-text replies follow our tagged layout.

The seed tables follow docs/contracts.md; they are rendered here with PyMuPDF at a low DPI so the
stage tests do not depend on the seed stage's code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pymupdf

from longdoc_sdg.ids import stable_id
from longdoc_sdg.seed.shard import PAGES_SCHEMA
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
PDF_DIRS = (REPO / "resources" / "sample_pdfs", REPO / "tests" / "data" / "real_pdfs")

PAGE_SCHEMA = PAGES_SCHEMA  # the seed's own pages table layout


def real_pdfs() -> list[Path]:
    for folder in PDF_DIRS:
        found = sorted(folder.glob("*.pdf"))
        if len(found) >= 2:
            return found
    return []


def page_row(doc_id: str, page: pymupdf.Page, number: int, dpi: float = 40) -> dict:
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    w, h = page.rect.width, page.rect.height
    blocks = []
    for x1, y1, x2, y2, text, *_ in page.get_text("blocks"):
        if text.strip():
            blocks.append({"bbox": [x1 / w, y1 / h, x2 / w, y2 / h], "text": text.strip()})
    return {
        "doc_id": doc_id,
        "page_number": number,
        "png": pix.tobytes("png"),
        "width": pix.width,
        "height": pix.height,
        "dpi": dpi,
        "is_gray": True,
        "page_width_pt": w,
        "page_height_pt": h,
        "pdf_text": page.get_text() or None,
        "text_blocks": json.dumps(blocks),
    }


def build_seed(
    out_dir: Path, pdfs: list[Path | tuple[Path, int]], max_pages: int = 3, dpi: float = 40
) -> dict[str, str]:
    """pages / documents parquet files for the given PDFs (first `max_pages` pages, or the
    count paired with a PDF), rendered at `dpi`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: str(out_dir / f"{k}.parquet") for k in ("pages", "documents")}
    docs = []
    with pq.ParquetWriter(paths["pages"], PAGE_SCHEMA) as writer:
        for item in pdfs:
            pdf, limit = item if isinstance(item, tuple) else (item, max_pages)
            doc_id = stable_id(str(pdf.name))
            with pymupdf.open(pdf) as doc:
                n = min(doc.page_count, limit)
                rows = [page_row(doc_id, doc[i], i + 1, dpi=dpi) for i in range(n)]
            # one row group per document, as the seed writes it
            writer.write_table(pa.Table.from_pylist(rows, schema=PAGE_SCHEMA))
            docs.append(
                {
                    "doc_id": doc_id,
                    "source_kind": "local",
                    "source": str(pdf),
                    "url": None,
                    "date": None,
                    "total_pages": n,
                    "extra": "{}",
                }
            )
    pq.write_table(pa.Table.from_pylist(docs), paths["documents"])
    return paths


class TaggedFakeServer(FakeOpenAIServer):
    """The project's fake server, but plain-text replies to our anchored-QA prompts follow the
    tagged layout (the base double answers free text with random words)."""

    def _completion(self, req: dict, key: str, fault):
        payload = super()._completion(req, key, fault)
        text = json.dumps(req["messages"])
        message = payload["choices"][0]["message"]
        content = req["messages"][-1]["content"]
        empty_prompt = isinstance(content, list) and {"type": "text", "text": ""} in content
        if fault is None and empty_prompt:
            # a Nemotron-Parse request: answer with its element markup
            message["content"] = (
                "<x_0.1><y_0.05>Quarterly results<x_0.9><y_0.08><class_Title>"
                "<x_0.1><y_0.1>Revenue rose 12% to 4.2 million.<x_0.9><y_0.2><class_Text>"
            )
        elif fault is None and "response_format" not in req and "<quality_score>" in text:
            # Cite the labelled pages, or the single page the prompt names.
            pages = (
                [int(p) for p in re.findall(r"Page (\d+):", text)]
                or [int(p) for p in re.findall(r"image is page (\d+) of", text)]
                or [1]
            )
            message["content"] = (
                "<question>\nHow many rows does Table 1 on page 2 list?\n</question>\n"
                f"<answer>{int(key[:4], 16) % 50}</answer>\n"
                f"<evidence_pages>{json.dumps(pages[:2])}</evidence_pages>\n"
                "<quality_score>1</quality_score>"
            )
        return payload
