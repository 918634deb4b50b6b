"""The document manifest: stable document ids and append-only shard assignment.

Each shard's manifest file is written once and never changed, so adding documents to a source
adds new shards and leaves existing shards (and everything computed from them) untouched.
Only the workflow's `manifest` job writes it (under a file lock, so two runs never shard a
document twice) and then lists the shards in `index.json`; parsing the workflow only reads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .ids import SHARD_DIGITS, shard_name, stable_id
from .io import write_parquet_atomic, write_text_atomic

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


def local_entry_problem(entry: Path, root: Path, symlinks: str = "inside") -> str | None:
    """Why a file found in a local source folder must not be read, or None. Only metadata is
    looked at (never the bytes of a link's target): loops and broken links, links leaving the
    folder (unless `symlinks` is "follow"), any link (when "refuse"), and non-regular files
    such as FIFOs, which would block a reader forever."""
    try:
        status = os.stat(entry)  # follows links: ELOOP for a loop, ENOENT for a dangling link
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if entry.is_symlink():
            return "broken symbolic link"
        return None  # gone: the fetcher reports it as missing
    if entry.is_symlink():
        if symlinks == "refuse":
            return "is a symbolic link (source.settings.local.symlinks: refuse)"
        if symlinks == "inside":
            target = Path(os.path.realpath(entry))
            if not target.is_relative_to(os.path.realpath(root)):
                return "symbolic link to a file outside the source folder (set source.settings.local.symlinks: follow to allow)"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    return None


def _local_documents(cfg: dict) -> Iterator[dict]:
    root = Path(cfg["path"]).expanduser().absolute()
    if not root.is_dir():
        raise SourceError(
            f"source.settings.local.path: folder {str(root)!r} does not exist; point it at a folder of PDFs "
            "(searched recursively) or choose another source.settings.kind"
        )
    suffix = cfg.get("suffix", ".pdf").lower()
    symlinks = cfg.get("symlinks", "inside")
    found = []
    # Linked folders are never entered (no loops, nothing outside); linked files are checked.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(suffix):
                found.append(Path(dirpath, name))
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        extra = {"relative_path": rel}
        if path.is_symlink():
            extra["symlinks"] = symlinks
        problem = local_entry_problem(path, root, symlinks)
        if problem:
            # still one manifest row: the seed records it as a failure naming the entry
            extra["refused"] = f"{rel} in source.settings.local.path: {problem}"
        yield {
            "doc_id": stable_id("local", rel),
            "source_kind": "local",
            "source": str(path),
            "url": None,
            "date": None,
            "extra": json.dumps(extra),
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
            "source.settings.kind=finepdfs needs the `datasets` package: pip install -e '.[hub]' (from a checkout; 'longdoc-sdg[hub]' from a package index)"
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


INDEX_NAME = "index.json"


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on the manifest folder: one writer at a time, across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sync_manifest(source: dict, manifest_dir: str | os.PathLike, documents_per_shard: int) -> list[str]:
    """Assign documents not yet in the manifest to new shards; return every shard name. Holds
    the folder's lock from reading the known ids to writing the new shards."""
    directory = Path(manifest_dir)
    with _locked(directory):
        return _sync_locked(source, directory, documents_per_shard)


def _sync_locked(source: dict, directory: Path, documents_per_shard: int) -> list[str]:
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


def read_index(manifest_dir: str | os.PathLike) -> dict | None:
    """The manifest job's index ({documents_per_shard, shards}), or None before it ran."""
    path = Path(manifest_dir) / INDEX_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def check_sharding(manifest_dir: str | os.PathLike, documents_per_shard: int) -> None:
    """Refuse a documents_per_shard other than the one the existing manifest was made with
    (read only: safe while parsing)."""
    index = read_index(manifest_dir)
    if index is None or index.get("documents_per_shard") in (None, documents_per_shard):
        return
    raise ValueError(
        f"sharding.settings.documents_per_shard is {documents_per_shard}, but the manifest in {manifest_dir} was "
        f"made with {index['documents_per_shard']}: shards are never re-cut. Set it back to "
        f"{index['documents_per_shard']}, or give a new results_dir to shard with {documents_per_shard}."
    )


def write_index(manifest_dir: str | os.PathLike, source: dict, documents_per_shard: int) -> dict:
    """The manifest job: add new documents as new shards, then write the index listing them."""
    directory = Path(manifest_dir)
    with _locked(directory):
        # A killed manifest job's partial shard or index files (every writer here holds the lock).
        for stale in directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        check_sharding(directory, documents_per_shard)
        shards = _sync_locked(source, directory, documents_per_shard)
        index = {"documents_per_shard": documents_per_shard, "shards": shards}
        write_text_atomic(directory / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return index


def source_fingerprint(source: dict) -> str | None:
    """What the source lists now, hashed (read only), so the manifest job reruns when documents
    are added: the ids of a local folder or URL list. None for FinePDFs: its settings pick the
    rows, and streaming them while parsing would cost a download."""
    if source["kind"] == "finepdfs":
        return None
    digest = hashlib.sha256()
    for doc in list_source_documents(source):
        digest.update(doc["doc_id"].encode() + b"\n")
    return digest.hexdigest()[:16]


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()
