"""The document manifest: stable document ids and append-only shard assignment.

Each shard's manifest file is written once and never changed, so adding documents to a source
adds new shards and leaves existing shards (and everything computed from them) untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .ids import SHARD_DIGITS, shard_name, stable_id
from .io import write_parquet_atomic

MANIFEST_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source_kind", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("extra", pa.string()),
    ]
)


class SourceError(ValueError):
    """A configured document source cannot be read; the message names the setting to fix."""


def _local_documents(cfg: dict) -> Iterator[dict]:
    root = Path(cfg["path"]).expanduser()
    if not root.is_dir():
        raise SourceError(
            f"source.settings.local.path: folder {str(root)!r} does not exist; point it at a folder of PDFs "
            "(searched recursively) or choose another source.settings.kind"
        )
    suffix = cfg.get("suffix", ".pdf").lower()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(suffix):
                found.append(Path(dirpath, name))
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        yield {
            "doc_id": stable_id("local", rel),
            "source_kind": "local",
            "source": str(path.resolve()),
            "url": None,
            "date": None,
            "extra": json.dumps({"relative_path": rel}),
        }


def _url_documents(cfg: dict) -> Iterator[dict]:
    path = cfg.get("path")
    if not path or not Path(path).is_file():
        raise SourceError(
            f"source.settings.urls.path: URL list {path!r} not found; give a text file with one http(s) URL "
            "per line ('#' starts a comment)"
        )
    seen = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        url = line.split("#", 1)[0].strip()
        if not url or url in seen:
            continue
        seen.add(url)
        yield {
            "doc_id": stable_id("url", url),
            "source_kind": "urls",
            "source": url,
            "url": url,
            "date": None,
            "extra": json.dumps({}),
        }


FINEPDFS_EXTRA_FIELDS = ("id", "dump", "file_path", "offset", "language", "token_count", "is_truncated")


def _finepdfs_documents(cfg: dict) -> Iterator[dict]:
    """Stream rows of the FinePDFs dataset (hub id or a local copy with the same layout)."""
    try:
        from datasets import load_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SourceError(
            "source.settings.kind=finepdfs needs the `datasets` package: pip install 'longdoc-sdg[hub]'"
        ) from exc
    data_files = cfg["data_files"].format(subset=cfg["subset"], split=cfg["split"])
    dataset = load_dataset(cfg["dataset"], data_files={"train": data_files}, split="train", streaming=True)
    count = 0
    for row in dataset:
        if count >= cfg["num_documents"]:
            break
        url = row.get("url")
        if not url:
            continue
        count += 1
        extra = {key: row.get(key) for key in FINEPDFS_EXTRA_FIELDS if key in row}
        yield {
            "doc_id": stable_id("finepdfs", str(row.get("id") or url)),
            "source_kind": "finepdfs",
            "source": url,
            "url": url,
            "date": None if row.get("date") is None else str(row.get("date")),
            "extra": json.dumps(extra, default=str),
        }


def list_source_documents(source: dict) -> Iterator[dict]:
    kind = source["kind"]
    readers = {"local": _local_documents, "urls": _url_documents, "finepdfs": _finepdfs_documents}
    if kind not in readers:
        raise SourceError(f"source.settings.kind: {kind!r} is not one of {sorted(readers)}")
    documents = readers[kind](source[kind])
    limit = source.get("max_documents")
    for index, doc in enumerate(documents):
        if limit is not None and index >= limit:
            break
        yield doc


def existing_shards(manifest_dir: str | os.PathLike) -> list[str]:
    directory = Path(manifest_dir)
    if not directory.is_dir():
        return []
    names = [p.stem for p in directory.glob("*.parquet")]
    return sorted(n for n in names if len(n) == SHARD_DIGITS and n.isdigit())


def _known_ids(manifest_dir: Path, shards: Iterable[str]) -> set[str]:
    known: set[str] = set()
    for shard in shards:
        table = pq.read_table(manifest_dir / f"{shard}.parquet", columns=["doc_id"])
        known.update(table.column("doc_id").to_pylist())
    return known


def sync_manifest(source: dict, manifest_dir: str | os.PathLike, documents_per_shard: int) -> list[str]:
    """Assign documents not yet in the manifest to new shards; return every shard name."""
    directory = Path(manifest_dir)
    shards = existing_shards(directory)
    known = _known_ids(directory, shards)
    next_index = int(shards[-1]) + 1 if shards else 0
    pending: list[dict] = []

    def flush() -> None:
        nonlocal next_index
        name = shard_name(next_index)
        write_parquet_atomic(pa.Table.from_pylist(pending, schema=MANIFEST_SCHEMA), directory / f"{name}.parquet")
        shards.append(name)
        next_index += 1
        pending.clear()

    for doc in list_source_documents(source):
        if doc["doc_id"] in known:
            continue
        known.add(doc["doc_id"])
        pending.append(doc)
        if len(pending) == documents_per_shard:
            flush()
    if pending:
        flush()
    return shards


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()
