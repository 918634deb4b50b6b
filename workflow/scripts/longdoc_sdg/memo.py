"""Reuse of finished stage outputs by content: a job that produces several outputs (the judge
runs every judged QA stage of a shard) redoes only those whose inputs or settings changed.

Key = digest of the input file + the settings fingerprint; the cache keeps a copy of each
finished output. A journal on disk means work in progress (a crash or a `requeue`): it is
resumed, never short-cut by the cache."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from .io import atomic_path, get_logger

log = get_logger("memo")


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def produce_or_reuse(
    output: str | os.PathLike,
    key: str,
    cache_dir: str | os.PathLike,
    journal: str | os.PathLike,
    produce: Callable[[], None],
) -> bool:
    """Write `output`, from the cache when `key` was produced before; True when reused."""
    cached = Path(cache_dir) / f"{key}.parquet"
    if cached.is_file() and not Path(journal).exists():
        _copy_atomic(cached, Path(output))
        log.info("reused %s (unchanged input and settings)", output)
        return True
    produce()
    _copy_atomic(Path(output), cached)
    return False
