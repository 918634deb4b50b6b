"""Builders for small good, bad and odd PDFs used by the seed tests.

Hand-written PDFs use `build_pdf`, which lays objects out with a correct cross-reference
table, so each file is broken only in the way its builder intends.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pymupdf


def build_pdf(objects: list[bytes], root: int = 1, trailer_extra: bytes = b"") -> bytes:
    """Serialise numbered objects (1-based, in order) into a PDF with a valid xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R %s>>\n" % (len(objects) + 1, root, trailer_extra)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def stream_object(data: bytes, dictionary: bytes = b"", compress: bool = True) -> bytes:
    if compress:
        data = zlib.compress(data, 9)
        dictionary += b" /Filter /FlateDecode"
    return b"<< /Length %d %s >>\nstream\n" % (len(data), dictionary) + data + b"\nendstream"


def text_pdf(pages: int = 3, size: tuple[float, float] = (612, 792), colour: bool = False) -> bytes:
    """A small valid PDF with one line of text per page (blue text when `colour`)."""
    doc = pymupdf.open()
    for number in range(1, pages + 1):
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text(
            (72, 72),
            f"Page {number} of a generated test document",
            fontsize=14,
            color=(0, 0, 1) if colour else (0, 0, 0),
        )
    return doc.tobytes()


def zero_page_pdf() -> bytes:
    """Parses fine but its page tree is empty (PyMuPDF refuses to save such a file)."""
    return build_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def encrypted_pdf(user_password: str = "secret") -> bytes:
    doc = pymupdf.open(stream=text_pdf(2), filetype="pdf")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=user_password, owner_pw="owner-" + user_password)


def truncated_pdf(data: bytes, fraction: float = 0.5) -> bytes:
    """A download cut short: the tail (xref, trailer and %%EOF) is missing."""
    return data[: int(len(data) * fraction)]


def html_named_pdf() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"


def giant_page_pdf(inches: float = 200.0) -> bytes:
    """One page of inches x inches (200 in is the largest size the PDF spec allows)."""
    side = inches * 72
    doc = pymupdf.open()
    page = doc.new_page(width=side, height=side)
    page.draw_rect(
        pymupdf.Rect(side * 0.1, side * 0.1, side * 0.6, side * 0.6),
        color=(1, 0, 0),
        fill=(0, 0.5, 0),
        width=side / 200,
    )
    page.insert_text((side * 0.1, side * 0.8), "giant", fontsize=side / 20)
    return doc.tobytes()


def hanging_pdf(depth: int = 9, fan_out: int = 12) -> bytes:
    """A 'billion laughs' page: each form XObject draws the next level `fan_out` times, so
    rendering does fan_out**depth path fills from a file of a few kilobytes."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"]
    first_form = 5
    objects.append(
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /XObject << /F %d 0 R >> >> >>" % first_form
    )
    objects.append(stream_object(b"/F Do"))
    for level in range(depth):
        number = first_form + level
        if level == depth - 1:
            content = b"0 0 1 1 re f"
            resources = b""
        else:
            content = b"q /F Do Q " * fan_out
            resources = b"/Resources << /XObject << /F %d 0 R >> >>" % (number + 1)
        objects.append(stream_object(content, b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] " + resources))
    return build_pdf(objects)


def page_bomb_pdf(pages: int = 2500) -> bytes:
    """A small file (tens of KB, pages share compressed object streams) with more pages than
    the seed's page cap. (A page tree that merely lies in /Count is rejected by MuPDF as
    corrupt, so a real bomb has to really hold the pages.)"""
    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page(width=200, height=200)
    return doc.tobytes(garbage=1, deflate=True, use_objstms=1)


def lying_page_count_pdf(claimed: int = 1_000_000) -> bytes:
    """One real page under a page tree that claims `claimed` pages."""
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % claimed,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        ]
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Report-like prose for stand-in benchmark documents (decontamination and dedup tests).
VOCABULARY = (
    "revenue margin quarter growth forecast segment capital asset liability equity dividend board "
    "policy region market customer product service network energy transport health education survey "
    "sample rate index figure table chart report annual review strategy risk return cost price volume"
).split()


def benchmark_pdf(path: Path, seed: int, pages: int = 8) -> None:
    rng = random.Random(seed)
    doc = pymupdf.open()
    for number in range(pages):
        page = doc.new_page(width=420, height=595)
        text = " ".join(rng.choice(VOCABULARY) for _ in range(160))
        page.insert_textbox(pymupdf.Rect(30, 30, 390, 565), f"Section {number + 1}. {text}", fontsize=9)
    doc.set_metadata({"title": f"Benchmark document {seed}", "author": "Benchmark authors"})
    doc.save(path)


def numbered_page_pdfs(folder: Path, page_counts: tuple[int, ...]) -> None:
    """doc0.pdf, doc1.pdf, ... in FOLDER with the given page counts, each page saying which it is."""
    for index, pages in enumerate(page_counts):
        doc = pymupdf.open()
        for number in range(1, pages + 1):
            page = doc.new_page(width=300, height=400)
            page.insert_text((40, 60), f"Document {index}, page {number} of {pages}", fontsize=12)
        doc.save(folder / f"doc{index}.pdf")
