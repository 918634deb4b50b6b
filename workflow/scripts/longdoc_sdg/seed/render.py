"""Open an untrusted PDF and render pages to lossless PNG plus the PDF's own text layer.

Runs inside a sandboxed worker process (see `worker.py`); everything here raises
`SeedFailure` for document problems and lets resource limits handle hangs and bombs.

Per page: one display list (the content stream is interpreted once) feeds the rasteriser,
with MuPDF's colour-test device in passthrough, and the text extraction. The test device
answers "definitely colour" for most colour pages at no measurable cost, so only pages it
calls gray get the exact pixel check (every pixel R == G == B) before being stored as gray.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pymupdf

from .errors import SeedFailure
from .png import encode_png

_TEXT_FLAGS = pymupdf.TEXTFLAGS_TEXT
_TAIL_BYTES = 2048
_DPI_STEP = 0.25  # effective DPIs are multiples of this: exact in float32, reproducible


@dataclass
class RenderOptions:
    dpi: float = 144.0
    max_pixels_per_page: int = 40_000_000
    max_document_pages: int = 2000
    gray_detection: bool = True
    png_compression_level: int = 1

    @classmethod
    def from_params(cls, params) -> "RenderOptions":
        return cls(
            dpi=params.dpi,
            max_pixels_per_page=params.max_pixels_per_page,
            max_document_pages=params.max_document_pages,
            gray_detection=params.gray_detection,
            png_compression_level=params.png_compression_level,
        )


@dataclass
class RenderedPage:
    page_number: int  # 1-based
    png: bytes
    width: int
    height: int
    dpi: float
    is_gray: bool
    page_width_pt: float
    page_height_pt: float
    pdf_text: str | None
    text_blocks: str  # JSON


def _mupdf_warnings() -> str:
    text = pymupdf.TOOLS.mupdf_warnings(reset=True) or ""
    lines = [line for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:4])


# MuPDF reports a failed allocation as a generic error ("malloc (N bytes) failed", "calloc
# (N x M bytes) failed", "out of memory", ...): under the worker's memory limit that is the
# document being too large, not broken.
_MEMORY_TEXT = re.compile(r"\b(?:m|c|re)alloc\b|out of memory|cannot allocate|memory limit|too large", re.IGNORECASE)
MEMORY_ADVICE = "raise seed.run.worker.memory_mb or lower seed.settings.max_pixels_per_page"


def _is_memory_error(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or bool(_MEMORY_TEXT.search(str(error)))


def open_pdf(path: str | Path, max_pages: int) -> pymupdf.Document:
    """Open and vet a PDF: encrypted, empty, truncated, unparsable and page bombs fail here."""
    path = Path(path)
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    try:
        # filetype is forced: MuPDF would otherwise happily open EPUB, XPS or images.
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as error:  # MuPDF reports parse errors as several exception types
        if _is_memory_error(error):
            raise SeedFailure("too_large", f"memory limit reached while opening: {error}: {MEMORY_ADVICE}") from None
        raise SeedFailure("corrupt", f"cannot open PDF: {error}") from None
    if doc.needs_pass:
        raise SeedFailure("encrypted", "the PDF needs a password")
    try:
        page_count = doc.page_count
    except Exception as error:
        if _is_memory_error(error):
            raise SeedFailure("too_large", f"memory limit reached counting pages: {error}: {MEMORY_ADVICE}") from None
        raise SeedFailure("corrupt", f"broken page tree: {error}") from None
    if doc.is_repaired:
        # MuPDF repairs a truncated file into a plausible-looking document with blank pages;
        # a complete file ends with %%EOF (followed at most by a little junk).
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            tail = handle.read()
        if b"%%EOF" not in tail:
            raise SeedFailure("corrupt", f"truncated PDF (no %%EOF at the end; repaired: {_mupdf_warnings()})")
        if page_count == 0:
            raise SeedFailure("corrupt", f"no pages after repairing the PDF: {_mupdf_warnings()}")
    if page_count == 0:
        raise SeedFailure("empty", "the PDF has no pages")
    if page_count > max_pages:
        raise SeedFailure(
            "too_large", f"{page_count} pages exceed the cap of {max_pages}: raise seed.run.max_document_pages"
        )
    return doc


def effective_dpi(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """`dpi`, or the largest multiple of 0.25 below it whose raster fits the pixel budget."""
    width, height = _raster_size(width_pt, height_pt, dpi)
    if width * height <= max_pixels:
        return dpi
    fit = 72.0 * math.sqrt(max_pixels / (width_pt * height_pt))
    candidate = math.floor(fit / _DPI_STEP) * _DPI_STEP
    while candidate > 0:
        w, h = _raster_size(width_pt, height_pt, candidate)
        if w * h <= max_pixels:
            return candidate
        candidate -= _DPI_STEP
    return 0.0


def _raster_size(width_pt: float, height_pt: float, dpi: float) -> tuple[int, int]:
    rect = pymupdf.Rect(0, 0, width_pt, height_pt) * pymupdf.Matrix(dpi / 72, dpi / 72)
    irect = rect.round()
    return irect.width, irect.height


_RGB = None
_TEST_OPTIONS = 0


def _raster_with_colour_test(display_list: pymupdf.DisplayList, zoom: float):
    """Rasterise like `Page.get_pixmap` (white background, RGB, no alpha) while MuPDF's test
    device watches every colour drawn. Returns (pixmap, memoryview, is_colour verdict):
    0 = gray, 1 = probably colour, 2 = definitely colour."""
    global _RGB, _TEST_OPTIONS
    mupdf = pymupdf.mupdf
    if _RGB is None:
        _RGB = mupdf.FzColorspace(mupdf.FzColorspace.Fixed_RGB)
        _TEST_OPTIONS = mupdf.FZ_TEST_OPT_IMAGES | mupdf.FZ_TEST_OPT_SHADINGS
    dl = display_list.this
    matrix = mupdf.FzMatrix(zoom, 0, 0, zoom, 0, 0)
    irect = mupdf.fz_round_rect(mupdf.fz_transform_rect(mupdf.fz_bound_display_list(dl), matrix))
    pix = mupdf.fz_new_pixmap_with_bbox(_RGB, irect, mupdf.FzSeparations(), 0)
    mupdf.fz_clear_pixmap_with_value(pix, 0xFF)
    draw = mupdf.fz_new_draw_device(matrix, pix)
    # The out-param struct must outlive the device: the device writes its verdict into it.
    verdict = mupdf.ll_fz_new_test_device_outparams()
    test = mupdf.FzDevice(mupdf.ll_fz_new_test_device_outparams_fn(0.0, _TEST_OPTIONS, draw.m_internal, verdict))
    infinite = mupdf.FzRect(mupdf.FzRect.Fixed_INFINITE)
    mupdf.fz_run_display_list(dl, test, mupdf.FzMatrix(), infinite, mupdf.FzCookie())
    mupdf.fz_close_device(test)
    mupdf.fz_close_device(draw)
    is_colour = int(verdict.is_color)
    del test
    shape = (mupdf.fz_pixmap_height(pix), mupdf.fz_pixmap_width(pix), mupdf.fz_pixmap_stride(pix))
    return pix, mupdf.fz_pixmap_samples_memoryview(pix), shape, is_colour


def _raster_plain(display_list: pymupdf.DisplayList, zoom: float):
    pix = display_list.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
    return pix, pix.samples_mv, (pix.height, pix.width, pix.stride), 1


_colour_test_available = True


def rasterise(display_list: pymupdf.DisplayList, zoom: float):
    """(keep-alive handle, RGB array of shape (h, w, 3), colour verdict)."""
    global _colour_test_available
    if _colour_test_available:
        try:
            handle, samples, shape, verdict = _raster_with_colour_test(display_list, zoom)
        except (AttributeError, TypeError):  # low-level bindings differ in this PyMuPDF
            _colour_test_available = False
    if not _colour_test_available:
        handle, samples, shape, verdict = _raster_plain(display_list, zoom)
    height, width, stride = shape
    rows = np.frombuffer(samples, dtype=np.uint8).reshape(height, stride)
    array = rows[:, : width * 3].reshape(height, width, 3)
    return (handle, samples), array, verdict


def gray_channel(rgb: np.ndarray) -> np.ndarray | None:
    """The single channel of a page whose pixels all have R == G == B, else None."""
    red = rgb[..., 0]
    if np.array_equal(red, rgb[..., 1]) and np.array_equal(red, rgb[..., 2]):
        return np.ascontiguousarray(red)
    return None


def _text_layer(display_list: pymupdf.DisplayList, bounds: pymupdf.Rect) -> tuple[str | None, str]:
    textpage = pymupdf.TextPage(display_list.get_textpage(_TEXT_FLAGS))
    text = textpage.extractText()
    width, height = bounds.width or 1.0, bounds.height or 1.0
    blocks = []
    for x0, y0, x1, y1, block_text, _number, kind in textpage.extractBLOCKS():
        block_text = block_text.strip()
        if kind != 0 or not block_text:
            continue
        # Normalised to the page (= the PNG), clamped: glyph boxes may poke past the edges.
        box = [
            min(1.0, max(0.0, (x0 - bounds.x0) / width)),
            min(1.0, max(0.0, (y0 - bounds.y0) / height)),
            min(1.0, max(0.0, (x1 - bounds.x0) / width)),
            min(1.0, max(0.0, (y1 - bounds.y0) / height)),
        ]
        blocks.append({"bbox": [round(v, 5) for v in box], "text": block_text})
    return (text if text.strip() else None), json.dumps(blocks, ensure_ascii=False)


def render_page(page: pymupdf.Page, options: RenderOptions) -> RenderedPage:
    display_list = page.get_displaylist(annots=True)
    bounds = display_list.rect
    if bounds.is_empty or bounds.width < 1e-3 or bounds.height < 1e-3:
        raise SeedFailure("corrupt", f"page {page.number + 1} has an empty page box")
    dpi = effective_dpi(bounds.width, bounds.height, options.dpi, options.max_pixels_per_page)
    if dpi < 1.0:
        size = f"{bounds.width:.0f}x{bounds.height:.0f} pt"
        raise SeedFailure(
            "too_large",
            f"page {page.number + 1} ({size}) does not fit the pixel budget even at 1 DPI: raise seed.settings.max_pixels_per_page",
        )
    keep_alive, rgb, verdict = rasterise(display_list, dpi / 72.0)
    pixels = rgb
    is_gray = False
    if options.gray_detection and verdict != 2:
        gray = gray_channel(rgb)
        if gray is not None:
            pixels, is_gray = gray, True
    png = encode_png(pixels, dpi=dpi, level=options.png_compression_level)
    height, width = rgb.shape[:2]
    del pixels, rgb, keep_alive
    pdf_text, text_blocks = _text_layer(display_list, bounds)
    return RenderedPage(
        page_number=page.number + 1,
        png=png,
        width=width,
        height=height,
        dpi=dpi,
        is_gray=is_gray,
        page_width_pt=bounds.width,
        page_height_pt=bounds.height,
        pdf_text=pdf_text,
        text_blocks=text_blocks,
    )


def render_pages(doc: pymupdf.Document, start: int, stop: int, options: RenderOptions) -> Iterator[RenderedPage]:
    """Render pages [start, stop) (0-based); a page that cannot be loaded fails the document."""
    for number in range(start, stop):
        try:
            page = doc.load_page(number)
            rendered = render_page(page, options)
            pymupdf.TOOLS.reset_mupdf_warnings()  # the store would otherwise grow all document long
            yield rendered
        except SeedFailure:
            raise
        except Exception as error:
            if _is_memory_error(error):
                raise SeedFailure(
                    "too_large", f"memory limit reached on page {number + 1}: {error}: {MEMORY_ADVICE}"
                ) from None
            raise SeedFailure("corrupt", f"page {number + 1}: {type(error).__name__}: {error}") from None
