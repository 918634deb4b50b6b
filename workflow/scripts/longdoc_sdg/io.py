"""Atomic outputs, job logging with secret redaction, and progress bars for job logs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

LOGGER_NAME = "longdoc_sdg"


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads from racing)."""
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give: 0644 / 0755 under the usual umask 022."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it into place only if the block succeeds.

    The file gets the umask's mode (mkstemp's own 0600 would hide results from a team), or
    `mode` for secret-bearing files, set before anything is written to it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, umask_mode() if mode is None else mode)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    """`mode` (e.g. 0o600) only for files holding a secret; others follow the umask."""
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, **kwargs) -> None:
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


class RedactingFilter(logging.Filter):
    """Replaces every known secret in a log record's final text with a marker."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = {s for s in secrets if s}

    def add(self, secret: str | None) -> None:
        if secret:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_redactor = RedactingFilter()


def register_secret(secret: str | None) -> None:
    """Make sure `secret` never appears in any log line written through our handlers."""
    _redactor.add(secret)


def redact(text: str) -> str:
    for secret in _redactor.secrets:
        text = text.replace(secret, "***")
    return text


def setup_job_logging(log_path: str | os.PathLike | None, level: int = logging.INFO) -> logging.Logger:
    """Send our logs (and stray stderr, e.g. progress bars) to the job's log file."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1, encoding="utf-8")
        sys.stderr = stream
    else:
        stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_redactor)
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar (rate and ETA) on stderr, which job scripts point at their log file."""
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        mininterval=2.0,
        dynamic_ncols=False,
        ncols=100,
        ascii=True,
    )


def as_list(value) -> list[str]:
    """A Snakemake input entry as a list of paths (one file or several)."""
    return [value] if isinstance(value, str) else list(value)
