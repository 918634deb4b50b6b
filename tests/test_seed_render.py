"""Rendering internals: PNG encoder, pixel budget, gray detection, text-layer geometry."""

import json
from pathlib import Path

import numpy as np
import pymupdf
import pytest

import pdf_factory
from longdoc_sdg.seed.errors import SeedFailure
from longdoc_sdg.seed.png import encode_png
from longdoc_sdg.seed.render import RenderOptions, effective_dpi, open_pdf, render_page


def decode_png(data: bytes) -> np.ndarray:
    """Decode with MuPDF (independent of our encoder) to (h, w) or (h, w, 3) uint8."""
    pix = pymupdf.Pixmap(data)
    array = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)
    return array[..., 0] if pix.n == 1 else array


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 3), (5, 9, 3), (33, 17, 3)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_encoder_is_lossless(shape, level):
    rng = np.random.default_rng(sum(shape) + level)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pixels[: shape[0] // 2] = 255  # mix flat and noisy rows like a page
    data = encode_png(pixels, dpi=144, level=level)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(decode_png(data), pixels)
    assert pymupdf.Pixmap(data).xres == 144


def test_png_encoder_rejects_bad_input():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.uint16))


def test_effective_dpi_keeps_small_pages_and_fits_giant_ones():
    assert effective_dpi(612, 792, 144, 40_000_000) == 144
    dpi = effective_dpi(14400, 14400, 144, 40_000_000)
    assert dpi < 144 and (dpi / 0.25).is_integer()
    side = round(14400 * dpi / 72)
    assert side * side <= 40_000_000
    # The next step up would not fit: the budget is used, not wasted.
    bigger = round(14400 * (dpi + 0.25) / 72)
    assert bigger * bigger > 40_000_000


def _render_first_page(tmp_path: Path, data: bytes, **options):
    path = pdf_factory.write(tmp_path / "doc.pdf", data)
    doc = open_pdf(path, 100)
    return doc, render_page(doc[0], RenderOptions(**options))


def test_gray_only_when_every_pixel_is_gray(tmp_path):
    _doc, black = _render_first_page(tmp_path, pdf_factory.text_pdf(1))
    assert black.is_gray and decode_png(black.png).ndim == 2
    _doc, blue = _render_first_page(tmp_path, pdf_factory.text_pdf(1, colour=True))
    assert not blue.is_gray and decode_png(blue.png).ndim == 3
    _doc, off = _render_first_page(tmp_path, pdf_factory.text_pdf(1), gray_detection=False)
    assert not off.is_gray


def test_near_gray_colour_stays_rgb_and_lossless(tmp_path):
    # MuPDF's colour test calls this gray (within its tolerance); the pixels say otherwise.
    doc = pymupdf.open()
    page = doc.new_page(width=200, height=200)
    page.draw_rect(pymupdf.Rect(20, 20, 180, 180), color=None, fill=(0.5, 0.504, 0.5))
    doc, rendered = _render_first_page(tmp_path, doc.tobytes())
    reference = doc[0].get_pixmap(dpi=144)
    expected = np.frombuffer(reference.samples, np.uint8).reshape(reference.height, reference.width, 3)
    assert not np.array_equal(expected[..., 0], expected[..., 1])  # the raster really has colour
    assert not rendered.is_gray
    assert np.array_equal(decode_png(rendered.png), expected)


def test_giant_page_is_rendered_within_the_pixel_budget(tmp_path):
    _doc, page = _render_first_page(tmp_path, pdf_factory.giant_page_pdf(200), max_pixels_per_page=4_000_000)
    assert page.width * page.height <= 4_000_000
    assert page.dpi < 144 and page.page_width_pt == pytest.approx(14400)
    assert decode_png(page.png).shape[:2] == (page.height, page.width)


def test_text_blocks_of_a_rotated_page_line_up_with_the_image(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_text((30, 60), "Rotated anchor text", fontsize=20)
    page.set_rotation(90)
    doc, rendered = _render_first_page(tmp_path, doc.tobytes())
    assert (rendered.width, rendered.height) == (600, 800)  # 300x400 pt after rotation, at 2x
    blocks = json.loads(rendered.text_blocks)
    assert [b["text"] for b in blocks] == ["Rotated anchor text"]
    image = decode_png(rendered.png)
    x0, y0, x1, y1 = blocks[0]["bbox"]
    assert x1 - x0 < y1 - y0  # vertical text on the rotated page
    inside = image[
        int(y0 * rendered.height) : int(y1 * rendered.height) + 1,
        int(x0 * rendered.width) : int(x1 * rendered.width) + 1,
    ]
    assert (inside < 128).sum() > 100  # the glyphs are inside the box...
    outside = image.copy()
    outside[
        int(y0 * rendered.height) : int(y1 * rendered.height) + 1,
        int(x0 * rendered.width) : int(x1 * rendered.width) + 1,
    ] = 255
    assert (outside < 128).sum() == 0  # ...and nowhere else
    assert "Rotated anchor text" in rendered.pdf_text


def test_page_without_text_has_null_text_and_empty_blocks(tmp_path):
    doc = pymupdf.open()
    doc.new_page().draw_circle((100, 100), 50, color=(1, 0, 0))
    _doc, rendered = _render_first_page(tmp_path, doc.tobytes())
    assert rendered.pdf_text is None and json.loads(rendered.text_blocks) == []


@pytest.mark.parametrize(
    "builder,reason",
    [
        (pdf_factory.zero_page_pdf, "empty"),
        (pdf_factory.encrypted_pdf, "encrypted"),
        (lambda: pdf_factory.truncated_pdf(pdf_factory.text_pdf(5), 0.6), "corrupt"),
        (pdf_factory.lying_page_count_pdf, "corrupt"),
        (lambda: b"%PDF-1.7\n" + b"\x00garbage" * 50, "corrupt"),
        (lambda: pdf_factory.page_bomb_pdf(120), "too_large"),
    ],
)
def test_open_pdf_classifies_bad_documents(tmp_path, builder, reason):
    path = pdf_factory.write(tmp_path / "bad.pdf", builder())
    with pytest.raises(SeedFailure) as caught:
        open_pdf(path, max_pages=100)
    assert caught.value.reason == reason


def test_owner_password_only_pdf_is_not_refused(tmp_path):
    data = pymupdf.open(stream=pdf_factory.text_pdf(2), filetype="pdf").tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw=""
    )
    doc = open_pdf(pdf_factory.write(tmp_path / "owner.pdf", data), 10)
    assert doc.page_count == 2


def test_stdlib_zlib_fallback_is_lossless(monkeypatch):
    import zlib

    from longdoc_sdg.seed import png

    monkeypatch.setattr(png, "_fast_zlib", zlib)
    monkeypatch.setattr(png, "_MAX_LEVEL", 9)
    pixels = np.random.default_rng(1).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(pixels, level=6)), pixels)
