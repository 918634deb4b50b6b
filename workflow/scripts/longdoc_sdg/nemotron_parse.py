"""Nemotron-Parse: the request it expects and a tolerant parser of the element markup it emits.

The model answers with a run of elements, each
    <x_X1><y_Y1>TEXT<x_X2><y_Y2><class_LABEL>
where the coordinates are fractions of the page. Real outputs are messier than that: special
tokens survive (we ask for `skip_special_tokens: false` so the coordinate tokens are kept),
generation can stop mid-element, text can appear outside any element, and coordinates can come
out of order or slightly outside 0-1. The parser keeps every piece of text it can and never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The model's classes (v1.1); anything else is passed through as emitted.
KNOWN_CLASSES = (
    "Text",
    "Title",
    "Section-header",
    "List-item",
    "Table",
    "Picture",
    "Caption",
    "Formula",
    "Footnote",
    "Page-header",
    "Page-footer",
    "Bibliography",
    "TOC",
)
# Labels older checkpoints emit for the same thing.
CLASS_ALIASES = {"Inline-formula": "Formula"}
# Text that sits outside any complete element (stray or cut off by the token limit).
UNLABELED = "Unlabeled"

# Sampling the reference uses: greedy, a mild repetition penalty, special tokens kept.
REQUEST_SAMPLING = {
    "temperature": 0.0,
    "top_k": 1,
    "repetition_penalty": 1.1,
    "skip_special_tokens": False,
}

_NUM = r"(-?\d+(?:\.\d*)?|-?\.\d+)"
_ELEMENT = re.compile(
    # The body may not contain another opening coordinate: a restarted element must not swallow
    # the one before it.
    rf"<x_{_NUM}>\s*<y_{_NUM}>((?:(?!<x_).)*?)<x_{_NUM}>\s*<y_{_NUM}>\s*<class_([^<>]*)>",
    re.DOTALL,
)
# Tokens that carry no content: task prompts, sequence markers, padding, continuation marks.
_NOISE = re.compile(r"</?s>|<pad>|<unk>|<tbc>|<predict_[a-z_]+>|<output_[a-z_]+>|<no_[a-z_]+>|\\<\|unk\|\\>")
# Half elements: a coordinate pair without its partner, or a class tag on its own.
_ORPHAN_TAG = re.compile(rf"<x_{_NUM}>|<y_{_NUM}>|<class_[^<>]*>")


@dataclass(frozen=True)
class Element:
    text: str
    class_label: str
    bbox: tuple[float, float, float, float] | None  # x1, y1, x2, y2 in 0-1, or None if unknown

    def metadata(self) -> dict:
        box = None
        if self.bbox is not None:
            x1, y1, x2, y2 = self.bbox
            box = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
        return {"bbox": box, "class_label": self.class_label}


def build_messages(image_part: dict) -> list[dict]:
    """One user turn: the page image and an empty text (the chat template adds the task tokens)."""
    return [{"role": "user", "content": [image_part, {"type": "text", "text": ""}]}]


def _clamp(v: float) -> float:
    return min(1.0, max(0.0, v))


def _box(
    x1: float, y1: float, x2: float, y2: float, canvas: tuple[int, int] | None, page_size: tuple[int, int] | None
) -> tuple[float, float, float, float]:
    if canvas and page_size:
        x1, y1, x2, y2 = unpad_bbox((x1, y1, x2, y2), canvas, page_size)
    # Order the corners and keep the box on the page.
    xa, xb = sorted((_clamp(x1), _clamp(x2)))
    ya, yb = sorted((_clamp(y1), _clamp(y2)))
    return (round(xa, 5), round(ya, 5), round(xb, 5), round(yb, 5))


def unpad_bbox(bbox, canvas: tuple[int, int], page_size: tuple[int, int]):
    """Map a box normalised to a padded canvas back to fractions of the page.

    Some serving stacks resize the page to fit a fixed canvas (keeping the aspect ratio), pad it
    centrally and report coordinates relative to the canvas; this undoes that.
    """
    cw, ch = canvas
    pw, ph = page_size
    scale = min(1.0, ch / ph, cw / pw)
    rw, rh = pw * scale, ph * scale
    left, top = (cw - rw) / 2.0, (ch - rh) / 2.0
    x1, y1, x2, y2 = bbox
    return ((x1 * cw - left) / rw, (y1 * ch - top) / rh, (x2 * cw - left) / rw, (y2 * ch - top) / rh)


def _clean(text: str) -> str:
    text = _NOISE.sub("", text)
    text = _ORPHAN_TAG.sub("", text)
    return text.strip()


def parse_markup(
    raw: str | None, canvas: tuple[int, int] | None = None, page_size: tuple[int, int] | None = None
) -> list[Element]:
    """Parse the model's reply into elements, in reading order.

    `canvas` + `page_size` (pixels) undo central padding when the coordinates refer to a canvas.
    """
    if not raw:
        return []
    raw = _NOISE.sub("", raw)
    elements: list[Element] = []
    last = 0

    def stray(chunk: str) -> None:
        text = _clean(chunk)
        if text:
            elements.append(Element(text, UNLABELED, None))

    for m in _ELEMENT.finditer(raw):
        stray(raw[last : m.start()])
        last = m.end()
        x1, y1, body, x2, y2, label = m.groups()
        label = label.strip() or UNLABELED
        label = CLASS_ALIASES.get(label, label)
        try:
            box = _box(float(x1), float(y1), float(x2), float(y2), canvas, page_size)
        except (ValueError, ZeroDivisionError):
            box = None
        elements.append(Element(_clean(body), label, box))
    stray(raw[last:])  # cut off by the token limit, or trailing text
    return elements


def to_columns(elements: list[Element]) -> tuple[str, list[dict]]:
    """`transcribed_texts` (texts joined by newlines) and its per-element metadata."""
    text = "\n".join(e.text for e in elements if e.text)
    return text, [e.metadata() for e in elements]
