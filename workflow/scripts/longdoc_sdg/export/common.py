"""Shared pieces of the export and report code: DuckDB connections, SQL snippets, file paths.

Everything that reads shards goes through DuckDB (`read_parquet` over file lists), so the queries
run out of core with a memory limit and a spill directory; page images are never read here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from ..io import umask_mode

if TYPE_CHECKING:
    import duckdb

SPLITS = ("train", "validation")
# The benchmark's answer formats (MMLongBench-Doc), in its order of frequency.
ANSWER_FORMATS = ("Int", "Str", "None", "Float", "List")
NOT_ANSWERABLE = "Not answerable"


# ---------------------------------------------------------------------------------------------
# File layout under {results}/ (docs/contracts.md, "Export and report").


def dataset_path(results: str, stage: str) -> str:
    return f"{results}/export/datasets/{stage}.parquet"


def summary_path(results: str, stage: str) -> str:
    return f"{results}/export/datasets/{stage}.summary.json"


def reference_dir(results: str, stage: str) -> str:
    return f"{results}/export/reference/{stage}"


def hub_dir(results: str) -> str:
    return f"{results}/export/hub"


def publish_record(results: str) -> str:
    return f"{results}/export/publish.json"


def shard_of(path: str) -> str:
    """The shard name in a shard file's path: `.../{shard}.parquet` or `.../{shard}/x.parquet`."""
    p = Path(path)
    return p.stem if p.stem.isdigit() else p.parent.name


# ---------------------------------------------------------------------------------------------
# DuckDB.


@contextlib.contextmanager
def duckdb_connection(
    mem_mb: int | None = None, spill_dir: str | os.PathLike | None = None, threads: int | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with a memory limit (75% of the job's mem_mb) and a private spill dir."""
    import duckdb

    if spill_dir:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix=".duckdb-", dir=spill_dir))
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET temp_directory = {sql_str(str(spill))}")
        if mem_mb:
            con.execute(f"SET memory_limit = '{max(int(mem_mb * 0.75), 256)}MB'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        # Results that need an order say so (ORDER BY); the rest may stream and spill freely.
        con.execute("SET preserve_insertion_order = false")
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_list(paths: Iterable[str]) -> str:
    return "[" + ", ".join(sql_str(p) for p in paths) + "]"


def read_parquet(paths: list[str], filename: bool = False) -> str:
    """A `read_parquet(...)` table expression over a list of files (union by column name)."""
    extra = ", filename = true" if filename else ""
    return f"read_parquet({sql_list(paths)}, union_by_name = true{extra})"


def columns_of(con, relation: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]


def normalised_question_sql(column: str = "question") -> str:
    """SQL: the question reduced for near-duplicate detection — Unicode NFC, lower case, every run
    of characters other than letters and digits (any script) collapsed to one space, trimmed."""
    return f"trim(regexp_replace(lower(nfc_normalize(coalesce({column}, ''))), '[^\\p{{L}}\\p{{N}}]+', ' ', 'g'))"


def answer_format_sql(column: str = "answer", question_type: str | None = None) -> str:
    """SQL: the benchmark answer format of a row (MMLongBench-Doc: Int, Float, Str, List, None).

    With a question type column: the format of the type (`taxonomy.QUESTION_TYPE_FORMATS`, the
    table verify scores by). Mixed types (text QA's numerical, visual QA's short), unknown types and
    rows without a type are read from the answer as the benchmark's extractor does (percentages
    are Float; `taxonomy.format_of_answer` is the same rule in Python)."""
    a = f"trim(coalesce({column}, ''))"
    from_answer = f"""CASE
        WHEN {a} = {sql_str(NOT_ANSWERABLE)} THEN 'None'
        WHEN regexp_full_match({a}, '\\[.*\\]') THEN 'List'
        WHEN regexp_full_match({a}, '[-+]?[0-9]{{1,3}}(,[0-9]{{3}})+|[-+]?[0-9]+') THEN 'Int'
        WHEN regexp_full_match({a}, '[-+]?([0-9]+(,[0-9]{{3}})*)?\\.[0-9]+ ?%?|[-+]?[0-9]+(,[0-9]{{3}})* ?%') THEN 'Float'
        ELSE 'Str' END"""
    if question_type is None:
        return from_answer
    from ..taxonomy import QUESTION_TYPE_FORMATS

    by_format: dict[str, list[str]] = {}
    for key, fmt in QUESTION_TYPE_FORMATS.items():
        if fmt is not None:
            by_format.setdefault(fmt, []).append(key)
    whens = " ".join(
        f"WHEN {question_type} IN ({', '.join(sql_str(k) for k in keys)}) THEN {sql_str(fmt)}"
        for fmt, keys in by_format.items()
    )
    return f"CASE {whens} ELSE {from_answer} END"


def write_json_atomic(path: str | os.PathLike, data) -> None:
    from ..io import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def replace_dir(tmp_dir: Path, target: str | os.PathLike) -> None:
    """Move a finished temporary folder into place. The old folder is moved aside first and
    removed only once the new one is in place, so no moment leaves neither."""
    target = Path(target)
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(tmp_dir, target)
    except BaseException:
        if aside is not None:
            os.replace(aside / target.name, target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def fresh_tmp_dir(target: str | os.PathLike) -> Path:
    """An empty folder next to `target`, on the same file system (for an atomic rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(umask_mode(directory=True))  # mkdtemp's 0700 would hide the export from a team
    return tmp


def query_table(con, sql: str):
    """A query's result as a pyarrow Table (DuckDB 1.x and 2.x spell this differently)."""
    rel = con.sql(sql)
    for name in ("to_arrow_table", "fetch_arrow_table"):
        if hasattr(rel, name):
            return getattr(rel, name)()
    result = rel.arrow()
    return result.read_all() if hasattr(result, "read_all") else result
