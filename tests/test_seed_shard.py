"""run_seed_shard end to end on the shipped real PDFs mixed with a folder of bad PDFs."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pymupdf
import pytest

import pdf_factory
from longdoc_sdg.seed import run_seed_shard

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "resources" / "sample_pdfs").glob("*.pdf"))

# Bad file name -> (builder, expected failure reason).
BAD = {
    "truncated.pdf": (lambda: pdf_factory.truncated_pdf(SAMPLES[-1].read_bytes(), 0.5), "corrupt"),
    "encrypted.pdf": (pdf_factory.encrypted_pdf, "encrypted"),
    "empty.pdf": (lambda: b"", "empty"),
    "html.pdf": (pdf_factory.html_named_pdf, "not_pdf"),
    "zero_pages.pdf": (pdf_factory.zero_page_pdf, "empty"),
    "hangs.pdf": (pdf_factory.hanging_pdf, "timeout"),
    "page_bomb.pdf": (pdf_factory.page_bomb_pdf, "too_large"),
    "lying_page_tree.pdf": (pdf_factory.lying_page_count_pdf, "corrupt"),
}
# Odd but good: seeded, within the pixel budget.
GIANT = "giant_200in.pdf"

# Tight CPU budget so the hanging file fails in seconds; small chunks so long documents are
# split across both workers.
PARAMS = {"worker": {"cpu_seconds_base": 0.5, "cpu_seconds_per_page": 0.1, "chunk_pages": 8}}


def decode_png(data: bytes) -> np.ndarray:
    pix = pymupdf.Pixmap(data)
    return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)


def write_manifest(path: Path, sources: list[Path]) -> list[dict]:
    rows = [
        {
            "doc_id": f"doc{i:03d}",
            "source_kind": "local",
            "source": str(source),
            "url": None,
            "date": "2024-01-0%d" % (1 + i % 9),
            "extra": json.dumps({"name": source.name}),
        }
        for i, source in enumerate(sources)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    bad_dir = root / "bad"
    for name, (builder, _reason) in BAD.items():
        pdf_factory.write(bad_dir / name, builder())
    giant = pdf_factory.write(bad_dir / GIANT, pdf_factory.giant_page_pdf(200))
    missing = bad_dir / "deleted.pdf"
    sources = SAMPLES + [bad_dir / name for name in BAD] + [giant, missing]
    rows = write_manifest(root / "manifest.parquet", sources)
    outputs = {name: str(root / "out" / f"{name}.parquet") for name in ("pages", "documents", "failures")}
    summary = run_seed_shard(str(root / "manifest.parquet"), outputs, PARAMS, threads=2)
    tables = {name: pq.read_table(path) for name, path in outputs.items()}
    return {"rows": rows, "outputs": outputs, "summary": summary, "tables": tables, "root": root}


def _by_source(seeded):
    return {row["source"]: row for row in seeded["rows"]}


def test_shipped_samples_are_real_multi_page_pdfs():
    assert len(SAMPLES) >= 3
    assert sum(p.stat().st_size for p in SAMPLES) < 1.5 * 1024 * 1024
    assert any(pymupdf.open(p).page_count > 10 for p in SAMPLES)


def test_every_row_is_seeded_or_fails_exactly_once(seeded):
    documents = seeded["tables"]["documents"].to_pylist()
    failures = seeded["tables"]["failures"].to_pylist()
    ids = [d["doc_id"] for d in documents] + [f["doc_id"] for f in failures]
    assert sorted(ids) == sorted(r["doc_id"] for r in seeded["rows"])
    assert len(ids) == len(set(ids))
    assert seeded["summary"]["documents"] == len(SAMPLES) + 1  # samples + the giant page


def test_bad_pdfs_fail_with_the_right_reason(seeded):
    failures = {Path(f["source"]).name: f for f in seeded["tables"]["failures"].to_pylist()}
    expected = {name: reason for name, (_builder, reason) in BAD.items()}
    expected["deleted.pdf"] = "missing"
    assert {name: f["reason"] for name, f in failures.items()} == expected
    assert all(f["message"] for f in failures.values())
    assert "CPU limit" in failures["hangs.pdf"]["message"]  # RLIMIT_CPU, not the wall-clock guard
    assert "2500 pages" in failures["page_bomb.pdf"]["message"]


def test_page_counts_match_pymupdf_and_one_row_group_per_document(seeded):
    documents = {d["doc_id"]: d for d in seeded["tables"]["documents"].to_pylist()}
    rows = _by_source(seeded)
    for sample in SAMPLES:
        doc_id = rows[str(sample)]["doc_id"]
        assert documents[doc_id]["total_pages"] == pymupdf.open(sample).page_count
    parquet = pq.ParquetFile(seeded["outputs"]["pages"])
    assert parquet.metadata.num_row_groups == len(documents)
    seen = []
    for group in range(parquet.metadata.num_row_groups):
        table = parquet.read_row_group(group, columns=["doc_id", "page_number"])
        ids = set(table["doc_id"].to_pylist())
        assert len(ids) == 1
        doc_id = ids.pop()
        seen.append(doc_id)
        assert table["page_number"].to_pylist() == list(range(1, documents[doc_id]["total_pages"] + 1))
    assert sorted(seen) == sorted(documents)  # each seeded document is exactly one row group
    manifest_order = [r["doc_id"] for r in seeded["rows"] if r["doc_id"] in documents]
    assert list(documents) == manifest_order  # the small tables are in manifest order


def test_pngs_are_lossless_at_the_expected_size(seeded):
    pages = seeded["tables"]["pages"].to_pylist()
    sources = {r["doc_id"]: r["source"] for r in seeded["rows"]}
    open_docs = {}
    gray_pages = colour_pages = 0
    for index, page in enumerate(pages):
        path = sources[page["doc_id"]]
        doc = open_docs.setdefault(path, pymupdf.open(path))
        pdf_page = doc[page["page_number"] - 1]
        zoom = page["dpi"] / 72
        expected_rect = (pdf_page.rect * pymupdf.Matrix(zoom, zoom)).round()
        image = decode_png(page["png"])
        assert image.shape[:2] == (page["height"], page["width"]) == (expected_rect.height, expected_rect.width)
        assert page["page_width_pt"] == pytest.approx(pdf_page.rect.width)
        assert page["page_height_pt"] == pytest.approx(pdf_page.rect.height)
        if index % 3:
            continue  # every page's size above; every third page's pixels against PyMuPDF's raster
        reference = pdf_page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom))
        raster = np.frombuffer(reference.samples, np.uint8).reshape(reference.height, reference.width, 3)
        all_gray = np.array_equal(raster[..., 0], raster[..., 1]) and np.array_equal(raster[..., 0], raster[..., 2])
        if page["is_gray"]:
            gray_pages += 1
            assert image.shape[2] == 1 and all_gray
            assert np.array_equal(image[..., 0], raster[..., 0])
        else:
            colour_pages += 1
            assert image.shape[2] == 3 and not all_gray
            assert np.array_equal(image, raster)
    assert gray_pages and colour_pages  # the samples exercise both paths


def test_default_dpi_and_giant_page_budget(seeded):
    pages = seeded["tables"]["pages"].to_pylist()
    sources = {r["doc_id"]: Path(r["source"]).name for r in seeded["rows"]}
    for page in pages:
        if sources[page["doc_id"]] == GIANT:
            assert page["width"] * page["height"] <= 40_000_000
            assert page["dpi"] < 144 and page["width"] > 5000
        else:
            assert page["dpi"] == 144


def test_text_layer_and_normalised_blocks(seeded):
    pages = [p for p in seeded["tables"]["pages"].to_pylist() if p["pdf_text"]]
    assert len(pages) > 100
    for page in pages:
        blocks = json.loads(page["text_blocks"])
        assert blocks, page["page_number"]
        image = decode_png(page["png"])
        for block in blocks:
            x0, y0, x1, y1 = block["bbox"]
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
            assert block["text"] and block["text"] == block["text"].strip()
            box = image[
                int(y0 * page["height"]) : int(np.ceil(y1 * page["height"])),
                int(x0 * page["width"]) : int(np.ceil(x1 * page["width"])),
            ]
            # Ink where the text is: the darkest channel, as coloured text (red: 203, 0, 0) is
            # light in some channel.
            assert box.size and box.min() < 200, block["text"][:40]


def test_documents_table(seeded):
    documents = seeded["tables"]["documents"]
    assert documents.schema.names == [
        "doc_id",
        "source_kind",
        "source",
        "url",
        "date",
        "total_pages",
        "extra",
        "sha256",
    ]
    rows = {r["doc_id"]: r for r in seeded["rows"]}
    for document in documents.to_pylist():
        assert document["extra"] == rows[document["doc_id"]]["extra"]
        assert document["date"] == rows[document["doc_id"]]["date"]
        # the bytes seeded, which the export compares across shards
        assert document["sha256"] == hashlib.sha256(Path(document["source"]).read_bytes()).hexdigest()


def test_schemas_follow_the_contract(seeded):
    pages = pq.read_schema(seeded["outputs"]["pages"])
    assert pages.names == [
        "doc_id",
        "page_number",
        "png",
        "width",
        "height",
        "dpi",
        "is_gray",
        "page_width_pt",
        "page_height_pt",
        "pdf_text",
        "text_blocks",
    ]
    assert pages.field("page_number").type == pa.int32() and pages.field("png").type == pa.binary()
    assert pages.field("dpi").type == pa.float32()
    assert pq.read_schema(seeded["outputs"]["failures"]).names == ["doc_id", "source", "reason", "message"]


def test_no_temporary_files_left(seeded):
    out = Path(seeded["outputs"]["pages"]).parent
    assert sorted(p.name for p in out.iterdir()) == [
        "documents.parquet",
        "failures.parquet",
        "pages.parquet",
    ]


def test_empty_manifest_writes_empty_tables(tmp_path):
    pq.write_table(
        pa.Table.from_pylist(
            [], schema=pa.schema([("doc_id", pa.string()), ("source_kind", pa.string()), ("source", pa.string())])
        ),
        tmp_path / "m.parquet",
    )
    outputs = {name: str(tmp_path / f"{name}.parquet") for name in ("pages", "documents", "failures")}
    summary = run_seed_shard(str(tmp_path / "m.parquet"), outputs, {}, threads=2)
    assert summary["documents"] == summary["failures"] == 0
    assert all(pq.read_table(p).num_rows == 0 for p in outputs.values())


def test_duplicate_doc_ids_are_a_manifest_bug(tmp_path):
    rows = write_manifest(tmp_path / "m.parquet", SAMPLES[:1] * 2)
    rows[1]["doc_id"] = rows[0]["doc_id"]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    outputs = {name: str(tmp_path / f"{name}.parquet") for name in ("pages", "documents", "failures")}
    with pytest.raises(ValueError, match="twice"):
        run_seed_shard(str(tmp_path / "m.parquet"), outputs, {}, threads=1)
    assert not any(os.path.exists(p) for p in outputs.values())


def test_real_pdfs_fetched_from_debian(real_pdfs, tmp_path):
    """The vignettes ci/fetch_real_pdfs.sh extracts from Debian packages: all seeded, page
    counts as PyMuPDF's, every 5th page pixel-identical to PyMuPDF's own raster."""
    write_manifest(tmp_path / "m.parquet", real_pdfs)
    outputs = {name: str(tmp_path / f"{name}.parquet") for name in ("pages", "documents", "failures")}
    summary = run_seed_shard(str(tmp_path / "m.parquet"), outputs, {}, threads=2)
    assert summary["failures"] == 0 and summary["documents"] == len(real_pdfs)
    documents = {d["source"]: d for d in pq.read_table(outputs["documents"]).to_pylist()}
    for pdf in real_pdfs:
        assert documents[str(pdf)]["total_pages"] == pymupdf.open(pdf).page_count
    ids = {d["doc_id"]: d["source"] for d in documents.values()}
    pages = pq.read_table(outputs["pages"]).to_pylist()
    for page in pages[::5]:
        pdf_page = pymupdf.open(ids[page["doc_id"]])[page["page_number"] - 1]
        raster = pdf_page.get_pixmap(dpi=144)
        expected = np.frombuffer(raster.samples, np.uint8).reshape(raster.height, raster.width, 3)
        image = decode_png(page["png"])
        assert np.array_equal(image, expected[..., :1] if page["is_gray"] else expected)
