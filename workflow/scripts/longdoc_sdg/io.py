"""Atomic outputs, job logging with secret redaction, and progress bars for job logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator

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


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Delete temporaries `atomic_path` left next to `path` when a job writing it was killed.
    Call at the start of the one job that owns `path` (Snakemake runs one at a time)."""
    target = Path(path)
    removed = 0
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    """Write `text` atomically; `mode=0o600` marks a secret file, the only kind not redacted
    (and set before the text is written); other files follow the umask."""
    if mode is None or mode & 0o077:
        text = redact(text)
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, **kwargs) -> None:
    kwargs.setdefault("compression", "zstd")
    table = redact_table(table)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


# Secrets (API keys, tokens) this process knows. Everything the project writes passes through
# `redact`: log records, the job's stderr, rows of stage journals and parquet tables, and text
# files other than secret (0600) files.
_secrets: set[str] = set()
MIN_SECRET_CHARS = 4
_MARKER = "***"


def register_secret(secret: str | None, what: str = "a secret") -> None:
    """Make sure `secret` never appears in anything written from this process. A very short key
    is refused: replacing every "ab" in logs and outputs would mangle them, not protect it."""
    if not secret:
        return
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{what} is only {len(secret)} character(s) long: it cannot be kept out of logs and outputs "
            f"without mangling them; use a key of at least {MIN_SECRET_CHARS} characters"
        )
    _secrets.add(secret)
    escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
    if escaped != secret:
        _secrets.add(escaped)  # its spelling inside JSON text


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MARKER)
    return text


def redact_table(table: pa.Table) -> pa.Table:
    """`table` with every secret replaced in its (top-level) string columns."""
    if not _secrets:
        return table
    import pyarrow.compute as pc

    for index, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        column = table.column(index)
        for secret in _secrets:
            if pc.any(pc.match_substring(column, secret)).as_py():
                column = pc.replace_substring(column, secret, _MARKER)
        table = table.set_column(index, field, column)
    return table


class RedactingFilter(logging.Filter):
    """Replaces every registered secret in a log record's final text with a marker."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg, record.args = redact(record.getMessage()), None
        return True


class _RedactingStream:
    """A text stream (the job log standing in for stderr) whose writes are redacted, so that
    tracebacks and progress bars cannot carry a key either."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


_redactor = RedactingFilter()


def setup_job_logging(log_path: str | os.PathLike | None, level: int = logging.INFO) -> logging.Logger:
    """Send our logs (and stray stderr, e.g. progress bars) to the job's log file."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = _RedactingStream(open(log_path, "a", buffering=1, encoding="utf-8"))
        sys.stderr = stream
    else:
        stream = sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_redactor)
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def start_job(job) -> logging.Logger:
    """What a workflow script does first with its `snakemake` object: log to the job's log
    file, and remove the temporaries a killed run of the job left next to its outputs (one job
    owns an output, so none of them is being written)."""
    logger = setup_job_logging(job.log[0] if job.log else None)
    for output in job.output:
        remove_stale_temps(output)
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
