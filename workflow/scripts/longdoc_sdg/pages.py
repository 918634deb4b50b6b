"""Page images on demand from a seed shard's pages.parquet.

The seed writes one row group per document, so one document's pages are one read. Stages walk
their inputs in file order, so caching only the current document keeps memory at one document
while reading each row group about once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import pyarrow.parquet as pq

# Columns besides the image: cheap to stream when a stage only needs to know which pages exist.
META_COLUMNS = (
    "doc_id", "page_number", "width", "height", "dpi", "is_gray", "page_width_pt",
    "page_height_pt", "pdf_text", "text_blocks",
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


class PageStore:
    """`get_pages(doc_id, pages)` over one pages.parquet, holding one document in memory."""

    def __init__(self, path: str):
        self.path = str(path)
        self._file = pq.ParquetFile(self.path)
        self._names = set(self._file.schema_arrow.names)
        self._groups = self._index_row_groups()
        self._lock = threading.Lock()
        self._cached_doc: str | None = None
        self._cached: dict[int, PageRecord] = {}
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

    def _load(self, doc_id: str) -> dict[int, PageRecord]:
        groups = self._groups.get(doc_id)
        if not groups:
            raise KeyError(f"document {doc_id!r} is not in {self.path}")
        columns = [c for c in ("png", *META_COLUMNS) if c in self._names]
        pages: dict[int, PageRecord] = {}
        for g in groups:
            self.row_group_reads += 1
            for row in self._file.read_row_group(g, columns=columns).to_pylist():
                if row["doc_id"] != doc_id:
                    continue
                pages[int(row["page_number"])] = PageRecord(
                    doc_id=doc_id,
                    page_number=int(row["page_number"]),
                    png=row["png"],
                    width=int(row["width"]),
                    height=int(row["height"]),
                    dpi=row.get("dpi"),
                    is_gray=row.get("is_gray"),
                    page_width_pt=row.get("page_width_pt"),
                    page_height_pt=row.get("page_height_pt"),
                    pdf_text=row.get("pdf_text"),
                    text_blocks=row.get("text_blocks"),
                )
        return pages

    def get_pages(self, doc_id: str, pages: list[int]) -> list[PageRecord]:
        """The requested pages in the requested order; KeyError names anything missing."""
        with self._lock:
            if doc_id != self._cached_doc:
                self._cached = self._load(doc_id)
                self._cached_doc = doc_id
            cached = self._cached
        missing = [p for p in pages if p not in cached]
        if missing:
            raise KeyError(f"pages {missing} of document {doc_id!r} are not in {self.path}")
        return [cached[p] for p in pages]

    def get_page(self, doc_id: str, page: int) -> PageRecord:
        return self.get_pages(doc_id, [page])[0]


def iter_page_meta(path: str, columns: tuple[str, ...] = ("doc_id", "page_number"),
                   batch_size: int = 1024) -> Iterator[dict]:
    """Stream page rows without their images."""
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    cols = [c for c in columns if c in names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
        yield from batch.to_pylist()
