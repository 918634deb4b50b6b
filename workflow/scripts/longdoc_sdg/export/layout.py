"""Streaming rows of a final dataset with their page images into size-capped parquet files.

Memory stays bounded: the dataset (no images) is read in batches, page images come from the
seed shard's pages.parquet one document at a time (`PageStore`), and output rows are flushed as
a row group every `row_group_bytes` of images. Files rotate at `max_file_bytes` and get their
final names once their split is complete: `hub_file_name` by default, the layout's own otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..pages import PageRecord, PageStore
from .common import SPLITS, shard_of

ROW_GROUP_BYTES = 64 * 1024 * 1024
ROW_GROUP_ROWS = 1000


# A file's name in its layout folder: (split, index in the split, files in the split, files of
# the splits written before it) -> relative path.
FileName = Callable[[str, int, int, int], str]


def hub_file_name(split: str, index: int, count: int, earlier: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


@dataclass
class SplitFiles:
    split: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    num_bytes: int = 0


class RotatingWriter:
    """Parquet files of one split in a folder: row groups by image bytes, files by size."""

    def __init__(
        self,
        folder: Path,
        split: str,
        schema: pa.Schema,
        max_file_bytes: int,
        row_group_bytes: int = ROW_GROUP_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
        file_name: FileName = hub_file_name,
        earlier_files: int = 0,
    ):
        self.folder, self.split, self.schema = folder, split, schema
        self.file_name, self.earlier_files = file_name, earlier_files
        self.max_file_bytes, self.row_group_bytes, self.row_group_rows = max_file_bytes, row_group_bytes, row_group_rows
        self._writer: pq.ParquetWriter | None = None
        self._paths: list[Path] = []
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._file_bytes = 0
        self.rows = 0

    def add(self, row: dict, nbytes: int) -> None:
        self._buffer.append(row)
        self._buffer_bytes += nbytes
        if self._buffer_bytes >= self.row_group_bytes or len(self._buffer) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            path = self.folder / f".{self.split}-{len(self._paths):05d}.parquet"
            self._paths.append(path)
            self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self._file_bytes = 0
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self.rows += len(self._buffer)
        self._file_bytes += self._buffer_bytes
        self._buffer, self._buffer_bytes = [], 0
        if self._file_bytes >= self.max_file_bytes:
            self._writer.close()
            self._writer = None

    def close(self) -> SplitFiles:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        out = SplitFiles(self.split, rows=self.rows)
        n = len(self._paths)
        for i, path in enumerate(self._paths):
            name = self.file_name(self.split, i, n, self.earlier_files)
            final = self.folder / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
            out.files.append(name)
            out.num_bytes += final.stat().st_size
        return out


class PageSource:
    """Page images by (shard, doc_id, pages), opening each shard's pages.parquet when needed."""

    def __init__(self, pages_files: list[str]):
        self.paths = {shard_of(p): p for p in pages_files}
        self._shard: str | None = None
        self._store: PageStore | None = None

    def get(self, shard: str, doc_id: str, pages: list[int]) -> list[PageRecord]:
        if shard != self._shard:
            if shard not in self.paths:
                raise KeyError(f"no pages.parquet for shard {shard} among the inputs")
            self._store = PageStore(self.paths[shard])
            self._shard = shard
        assert self._store is not None
        return self._store.get_pages(doc_id, [int(p) for p in pages])


def iter_dataset(path: str, batch_rows: int = 256) -> Iterator[dict]:
    """The rows of a final dataset (ordered by split, shard, doc_id, row_id), a batch at a time."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def write_layout(
    dataset: str,
    pages_files: list[str],
    folder: Path,
    schema: pa.Schema,
    make_row: Callable[[dict, list[PageRecord]], dict],
    max_file_bytes: int,
    row_group_bytes: int = ROW_GROUP_BYTES,
    row_group_rows: int = ROW_GROUP_ROWS,
    file_name: FileName = hub_file_name,
) -> dict[str, SplitFiles]:
    """Write one folder of parquet files (named by `file_name`) from a final dataset; returns
    files per split."""
    folder.mkdir(parents=True, exist_ok=True)
    source = PageSource(pages_files)
    writers: dict[str, RotatingWriter] = {}
    done: dict[str, SplitFiles] = {}
    for row in iter_dataset(dataset):
        split = row["split"]
        if split not in writers:
            for other in list(writers):  # rows come split by split: finish the previous one
                done[other] = writers.pop(other).close()
            earlier = sum(len(f.files) for f in done.values())
            writers[split] = RotatingWriter(
                folder, split, schema, max_file_bytes, row_group_bytes, row_group_rows, file_name, earlier
            )
        records = source.get(row["shard"], row["doc_id"], row["pages"] or [])
        writers[split].add(make_row(row, records), sum(len(r.png) for r in records))
    for split, writer in writers.items():
        done[split] = writer.close()
    return {s: done[s] for s in SPLITS if s in done}


def arrow_fields(path: str) -> list[pa.Field]:
    return list(pq.read_schema(path))
