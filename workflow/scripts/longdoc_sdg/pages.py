"""Page images on demand from a seed shard's pages.parquet.

The seed writes one row group per document, so one document's pages are one read. Stages walk
their inputs in file order, so caching only the current document keeps memory at one document
while reading each row group about once (a request built after other documents were read reads
its document again).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Columns besides the image: cheap to stream when a stage only needs to know which pages exist.
META_COLUMNS = (
    "doc_id",
    "page_number",
    "width",
    "height",
    "dpi",
    "is_gray",
    "page_width_pt",
    "page_height_pt",
    "pdf_text",
    "text_blocks",
)


@dataclass(frozen=True)
class PageRecord:
    doc_id: str
    page_number: int
    png: bytes
    width: int
    height: int
    dpi: float | None = None
    is_gray: bool | None = None
    page_width_pt: float | None = None
    page_height_pt: float | None = None
    pdf_text: str | None = None
    text_blocks: str | None = None


class _Doc:
    """One document's rows as Arrow read them, and where each page is."""

    __slots__ = ("table", "png", "rows", "_sizes")

    def __init__(self, table: pa.Table):
        self.table = table
        png = table.column("png")
        self.png = png.chunk(0) if png.num_chunks == 1 else png.combine_chunks()
        # a page stored twice: the later row wins
        self.rows = {int(p): i for i, p in enumerate(table.column("page_number").to_pylist())}
        self._sizes: list[int] | None = None

    def size(self, row: int) -> int:
        if self._sizes is None:
            self._sizes = [n or 0 for n in pc.binary_length(self.png).to_pylist()]
        return self._sizes[row]


class PageStore:
    """`get_pages(doc_id, pages)` over one pages.parquet, holding one document in memory.

    The document is kept as Arrow read it: `png_view` and `page_sizes` serve a request's images
    without making a Python copy of every page (what a stage holds while its request waits).
    """

    def __init__(self, path: str):
        self.path = str(path)
        self._file = pq.ParquetFile(self.path)
        self._names = set(self._file.schema_arrow.names)
        self._groups = self._index_row_groups()
        self._lock = threading.Lock()
        self._cached_doc: str | None = None
        self._cached: _Doc | None = None
        self.row_group_reads = 0  # observable in tests: one read per document visit

    def _index_row_groups(self) -> dict[str, list[int]]:
        index: dict[str, list[int]] = {}
        for i in range(self._file.num_row_groups):
            ids = self._file.read_row_group(i, columns=["doc_id"]).column("doc_id").to_pylist()
            # One document per row group by contract; tolerate more (lookups then filter rows).
            for doc_id in dict.fromkeys(ids):
                index.setdefault(doc_id, []).append(i)
        return index

    def doc_ids(self) -> list[str]:
        return list(self._groups)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._groups

    def _load(self, doc_id: str) -> _Doc:
        groups = self._groups.get(doc_id)
        if not groups:
            raise KeyError(f"document {doc_id!r} is not in {self.path}")
        columns = [c for c in ("png", *META_COLUMNS) if c in self._names]
        tables = []
        for g in groups:
            self.row_group_reads += 1
            table = self._file.read_row_group(g, columns=columns)
            if len(groups) > 1 or len(set(table.column("doc_id").unique().to_pylist())) > 1:
                table = table.filter(pc.equal(table.column("doc_id"), doc_id))
            tables.append(table)
        return _Doc(tables[0] if len(tables) == 1 else pa.concat_tables(tables))

    def _rows(self, doc_id: str, pages: list[int]) -> tuple[_Doc, list[int]]:
        with self._lock:
            if doc_id != self._cached_doc:
                self._cached = self._load(doc_id)
                self._cached_doc = doc_id
            doc = self._cached
        assert doc is not None
        missing = [p for p in pages if p not in doc.rows]
        if missing:
            raise KeyError(f"pages {missing} of document {doc_id!r} are not in {self.path}")
        return doc, [doc.rows[p] for p in pages]

    def get_pages(self, doc_id: str, pages: list[int]) -> list[PageRecord]:
        """The requested pages in the requested order; KeyError names anything missing."""
        doc, rows = self._rows(doc_id, pages)
        out = []
        for row in rows:
            values = doc.table.slice(row, 1).to_pylist()[0]
            out.append(
                PageRecord(
                    doc_id=doc_id,
                    page_number=int(values["page_number"]),
                    png=values["png"],
                    width=int(values["width"]),
                    height=int(values["height"]),
                    dpi=values.get("dpi"),
                    is_gray=values.get("is_gray"),
                    page_width_pt=values.get("page_width_pt"),
                    page_height_pt=values.get("page_height_pt"),
                    pdf_text=values.get("pdf_text"),
                    text_blocks=values.get("text_blocks"),
                )
            )
        return out

    def get_page(self, doc_id: str, page: int) -> PageRecord:
        return self.get_pages(doc_id, [page])[0]

    def page_sizes(self, doc_id: str, pages: list[int]) -> list[int]:
        """PNG bytes of each page, without copying any image; KeyError as get_pages."""
        doc, rows = self._rows(doc_id, pages)
        return [doc.size(row) for row in rows]

    def png_view(self, doc_id: str, page: int) -> memoryview:
        """One page's PNG as a view of the Arrow buffer (no copy); it keeps that buffer alive.
        Reloads the document if another one has been cached since."""
        doc, (row,) = self._rows(doc_id, [page])
        buffer = doc.png[row].as_buffer()
        return memoryview(buffer if buffer is not None else b"")


def iter_page_meta(
    path: str, columns: tuple[str, ...] = ("doc_id", "page_number"), batch_size: int = 1024
) -> Iterator[dict]:
    """Stream page rows without their images."""
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    cols = [c for c in columns if c in names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
        yield from batch.to_pylist()
