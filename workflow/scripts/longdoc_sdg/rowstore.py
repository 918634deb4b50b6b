"""Per-row persistence of a model stage's shard: a resumable journal, then one atomic parquet.

The journal (`{results}/.journal/{stage}/{shard}.jsonl`) starts with a header line holding the
stage's config hash and the output schema's fingerprint; every finished row (result or failure)
is one JSON line appended with a single unbuffered write. A rerun after a crash or kill reuses the
rows of a journal whose header matches and redoes only the rest; a torn last line is dropped.
`finalize` checks the row accounting, streams the journal into the final parquet in input order
(batch by batch, never the whole shard in memory), renames it into place and deletes the journal.
The parquet's schema metadata keeps the journal header and the journal's place, so
`shard_provenance` + `write_journal` can turn a finished shard back into a journal the next run
of the same config resumes from (`longdoc_sdg.reprocess`: rerun only the failed rows).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .ids import stable_id
from .io import atomic_path, get_logger, redact, remove_stale_temps

log = get_logger("rowstore")

JOURNAL_VERSION = 1
# Schema metadata key of a finalized shard: {"header": journal header, "journal": journal path
# relative to the shard's directory}.
PROVENANCE_KEY = b"longdoc_sdg.journal"

# Columns every model-stage output starts with (docs/contracts.md).
BASE_FIELDS = (
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("doc_id", pa.string()),
    pa.field("pages", pa.list_(pa.int32())),
    pa.field("status", pa.string(), nullable=False),
    pa.field("failure_reason", pa.string()),
    pa.field("failure_message", pa.string()),
    pa.field("model", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("reasoning_tokens", pa.int64()),
    # The resolution the row's requests were sent at (engine/budget.py): most images in one
    # request, mean pixels per image sent, smallest downscale factor (1.0: as stored), and the
    # largest prompt estimate checked against the model's context.
    pa.field("image_count", pa.int64()),
    pa.field("image_pixels", pa.int64()),
    pa.field("image_scale", pa.float64()),
    pa.field("est_prompt_tokens", pa.int64()),
)
BASE_COLUMNS = tuple(f.name for f in BASE_FIELDS)
STATUSES = ("ok", "failed")


class AccountingError(Exception):
    """Results + failures do not match the inputs exactly (or a row id repeats)."""


def output_schema(stage_schema: pa.Schema) -> pa.Schema:
    """Base columns, then the stage's own columns (a stage may restate a base column unchanged)."""
    fields = list(BASE_FIELDS)
    base = {f.name: f for f in BASE_FIELDS}
    for f in stage_schema:
        if f.name in base:
            if not f.type.equals(base[f.name].type):
                raise ValueError(f"stage column {f.name} is {f.type}, the base column is {base[f.name].type}")
            continue
        fields.append(f)
    return pa.schema(fields)


def _type_check(dtype: pa.DataType):
    """A cheap Python-side check for a column type (pyarrow per row costs ~0.3 ms; this ~1 us)."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return lambda v: isinstance(v, str)
    if pa.types.is_boolean(dtype):
        return lambda v: isinstance(v, bool)
    if pa.types.is_integer(dtype):
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if pa.types.is_floating(dtype):
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        inner = _type_check(dtype.value_type)
        return lambda v: isinstance(v, list) and all(x is None or inner(x) for x in v)
    if pa.types.is_struct(dtype) or pa.types.is_map(dtype):
        return lambda v: isinstance(v, (dict, list))  # details are checked by pyarrow at finalize
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        raise ValueError("binary columns cannot go through the JSON journal; store them elsewhere")
    return lambda v: True


def _fingerprint(schema: pa.Schema) -> str:
    return stable_id(schema.to_string(show_field_metadata=False, show_schema_metadata=False))


def _row_line(row: dict[str, Any]) -> bytes:
    # the write boundary of every stage row (failure messages may quote an endpoint's echo of the key)
    return (redact(json.dumps(row, ensure_ascii=False, separators=(",", ":"))) + "\n").encode()


def shard_provenance(output_path: str | os.PathLike) -> dict | None:
    """`{"header": journal header, "journal_path": Path}` of a finalized shard, or None when the
    shard carries none (written before provenance was recorded, or not a ShardWriter output)."""
    output_path = Path(output_path)
    raw = (pq.read_schema(output_path).metadata or {}).get(PROVENANCE_KEY)
    if raw is None:
        return None
    info = json.loads(raw)
    journal = Path(os.path.normpath(output_path.parent / info["journal"]))
    return {"header": info["header"], "journal_path": journal}


def write_journal(journal_path: str | os.PathLike, header: dict, rows: Iterable[dict[str, Any]]) -> int:
    """Write a whole journal (header line, then one line per finished row) atomically, in the
    format ShardWriter resumes from; returns the number of rows. Rows need a row_id and a status."""
    count = 0
    with atomic_path(journal_path) as tmp, open(tmp, "wb") as out:
        out.write((json.dumps(header) + "\n").encode())
        for row in rows:
            if not isinstance(row.get("row_id"), str) or row.get("status") not in STATUSES:
                raise ValueError(f"not a finished row: {str(row)[:200]}")
            out.write(_row_line(row))
            count += 1
        out.flush()
        os.fsync(out.fileno())
    return count


class ShardWriter:
    def __init__(
        self,
        output_path: str | os.PathLike,
        journal_path: str | os.PathLike,
        config_hash: str,
        schema: pa.Schema,
        batch_rows: int = 2000,
        batch_bytes: int = 32 * 1024 * 1024,
    ):
        self.output_path = Path(output_path)
        self.journal_path = Path(journal_path)
        self.config_hash = config_hash
        self.schema = output_schema(schema)
        self._names = frozenset(self.schema.names)
        self._checks = {f.name: (_type_check(f.type), str(f.type)) for f in self.schema}
        self._batch_rows = batch_rows
        self._batch_bytes = batch_bytes
        self._header = {
            "longdoc_sdg_journal": JOURNAL_VERSION,
            "config_hash": config_hash,
            "schema": _fingerprint(self.schema),
        }
        # row id -> (offset, length, failure reason) of its journal line: finalize writes in
        # input order by seeking, and redo() can forget failures of a given kind
        self._index: dict[str, tuple[int, int, str | None]] = {}
        self._size = 0
        self._file = None
        self.resumed = 0
        self._open()

    # -- journal

    def _open(self) -> None:
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.output_path)  # a killed finalize's partial parquet
        if self.journal_path.exists():
            self._load()
        if not self._index and self._size == 0:
            header = (json.dumps(self._header) + "\n").encode()
            with open(self.journal_path, "wb") as f:
                f.write(header)
            self._size = len(header)
        # unbuffered: each row is one write() straight to the OS, so a kill loses no finished row
        self._file = open(self.journal_path, "ab", buffering=0)

    def _load(self) -> None:
        good = 0
        with open(self.journal_path, "rb") as f:
            header_line = f.readline()
            try:
                header = json.loads(header_line) if header_line.endswith(b"\n") else None
            except ValueError:
                header = None
            if header != self._header:
                log.warning("journal %s belongs to another stage config or schema: discarding it", self.journal_path)
                self.journal_path.unlink()
                return
            good = len(header_line)
            for line in f:
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("torn line")
                    row = json.loads(line)
                    row_id = row["row_id"]
                    if not isinstance(row_id, str):
                        raise ValueError(f"bad row id {row_id!r}")
                except (ValueError, KeyError, TypeError) as exc:
                    # only the last line can be torn by a kill; anything after a bad line is dropped too
                    log.warning("journal %s: dropping from byte %d on (%s)", self.journal_path, good, exc)
                    break
                previous = self._index.get(row_id)
                # a later line supersedes a failure that redo() sent back for another try
                if previous is None or previous[2] is not None:
                    self._index[row_id] = (good, len(line), row.get("failure_reason"))
                else:
                    log.warning(
                        "journal %s: row %s repeats a finished row; keeping the first", self.journal_path, row_id
                    )
                good += len(line)
        if good < self.journal_path.stat().st_size:
            os.truncate(self.journal_path, good)
        self._size = good
        self.resumed = len(self._index)
        if self.resumed:
            log.info("journal %s: resuming with %d finished rows", self.journal_path, self.resumed)

    def done_ids(self) -> set[str]:
        """Row ids already finished (result or failure) in the journal."""
        return set(self._index)

    def redo(self, reasons: Iterable[str]) -> int:
        """Forget journal rows that failed with one of `reasons`, so they are processed again
        (e.g. infrastructure failures from a run that ended in an endpoint error). Their stale
        lines stay in the file but are never read again. Returns how many were forgotten."""
        reasons = set(reasons)
        stale = [k for k, (_, _, reason) in self._index.items() if reason in reasons]
        for row_id in stale:
            del self._index[row_id]
        if stale:
            log.info("journal %s: redoing %d rows that failed with %s", self.journal_path, len(stale), sorted(reasons))
        return len(stale)

    def outcomes(self) -> collections.Counter:
        """Finished rows by failure reason (None counts the ok rows)."""
        return collections.Counter(reason for _, _, reason in self._index.values())

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    def write(self, row: dict[str, Any]) -> None:
        """Append one finished row; it is on disk when this returns."""
        if self._file is None:
            raise RuntimeError("ShardWriter is finalized or closed")
        row_id = row.get("row_id")
        if not isinstance(row_id, str) or not row_id:
            raise ValueError(f"row without a string row_id: {row_id!r}")
        if row_id in self._index:
            raise AccountingError(f"row {row_id} written twice")
        unknown = row.keys() - self._names
        if unknown:
            raise ValueError(f"row {row_id}: columns not in the output schema: {sorted(unknown)}")
        status = row.get("status")
        if status not in STATUSES:
            raise ValueError(f"row {row_id}: status must be one of {STATUSES}, got {status!r}")
        if status == "failed" and not row.get("failure_reason"):
            raise ValueError(f"row {row_id}: a failed row needs a failure_reason")
        # type errors surface now, naming the row, rather than at finalize after the whole shard
        for name, value in row.items():
            if value is not None:
                check, type_name = self._checks[name]
                if not check(value):
                    raise ValueError(
                        f"row {row_id}: column {name} wants {type_name}, got {type(value).__name__} {value!r:.80}"
                    )
        line = _row_line(row)
        self._file.write(line)
        self._index[row_id] = (self._size, len(line), row.get("failure_reason") if status == "failed" else None)
        self._size += len(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- final output

    def finalize(self, expected_ids: Iterable[str]) -> dict:
        """Check accounting, write the parquet atomically in input order, delete the journal."""
        expected = list(expected_ids)
        if len(set(expected)) != len(expected):
            repeats = [k for k, n in collections.Counter(expected).items() if n > 1]
            raise AccountingError(f"input row ids repeat ({len(repeats)}), e.g. {repeats[:3]}")
        missing = [k for k in expected if k not in self._index]
        extra = self._index.keys() - set(expected)
        if missing or extra:
            raise AccountingError(
                f"{self.output_path}: {len(expected)} inputs but {len(self._index)} journal rows; "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
            )
        self.close()
        summary: dict[str, Any] = {"rows": len(expected), "ok": 0, "failed": 0, "reasons": collections.Counter()}
        tokens = dict.fromkeys(("prompt_tokens", "completion_tokens", "reasoning_tokens"), 0)
        # the header the rows were made under travels with the shard (see shard_provenance)
        provenance = {"header": self._header, "journal": os.path.relpath(self.journal_path, self.output_path.parent)}
        metadata = {**(self.schema.metadata or {}), PROVENANCE_KEY: json.dumps(provenance).encode()}
        schema = self.schema.with_metadata(metadata)
        with atomic_path(self.output_path) as tmp, open(self.journal_path, "rb") as journal:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as out:
                batch: list[dict] = []
                size = 0
                for row_id in expected:
                    offset, length, _ = self._index[row_id]
                    journal.seek(offset)
                    row = json.loads(journal.read(length))
                    if row.get("row_id") != row_id:
                        raise AccountingError(f"journal index out of step at row {row_id}")
                    summary[row["status"]] += 1
                    if row["status"] == "failed":
                        summary["reasons"][row["failure_reason"]] += 1
                    for key in tokens:
                        tokens[key] += row.get(key) or 0
                    batch.append(row)
                    size += length
                    if len(batch) >= self._batch_rows or size >= self._batch_bytes:
                        out.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                        batch, size = [], 0
                if batch or not expected:
                    out.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
        self.journal_path.unlink(missing_ok=True)
        summary["reasons"] = dict(summary["reasons"])
        summary.update(tokens)
        log.info(
            "%s: %d rows (%d ok, %d failed %s)",
            self.output_path,
            summary["rows"],
            summary["ok"],
            summary["failed"],
            summary["reasons"],
        )
        return summary

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
