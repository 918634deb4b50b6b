"""MMLongBench-Doc's mix (from its paper and repository), to set the generated data against.

Shares in percent of the benchmark's questions (`/work/shared/docs/mmlongbench-doc.md`).
"""

from __future__ import annotations

NAME = "MMLongBench-Doc"
QUESTIONS = 1082

ANSWER_FORMATS = {"Int": 27.6, "Str": 23.1, "None": 20.6, "Float": 14.7, "List": 14.0}
EVIDENCE_PAGES = {"single-page": 45.7, "cross-page": 33.3, "unanswerable": 20.6}
# A question may draw on several sources, so these add up to more than 100.
EVIDENCE_SOURCES = {"text": 28.0, "figure/image": 28.0, "table": 20.0, "chart": 17.0, "layout": 11.0}

# Page classes (stage 04) as the benchmark's evidence sources (layout has no page class).
CATEGORY_TO_SOURCE = {
    "NONE": "text",
    "TABULAR": "table",
    "QUANTITATIVE": "chart",
    "INFOGRAPHIC": "figure/image",
    "LOGIC_DIAGRAMS": "figure/image",
    "HIERARCHICAL": "figure/image",
    "SPATIAL_RELATIONAL": "figure/image",
    "SCHEMATIC": "figure/image",
}


def evidence_kind(num_evidence_pages: int, answer_format: str | None) -> str:
    """The benchmark's evidence-page class of a question."""
    if answer_format == "None":
        return "unanswerable"
    return "cross-page" if (num_evidence_pages or 0) >= 2 else "single-page"
