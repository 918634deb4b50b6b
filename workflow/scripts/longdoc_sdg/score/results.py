"""Result files in the benchmark's layout: loading, checking, scoring every row, aggregates.

A result row holds the `samples.json` fields plus `pred`, the extracted answer:

    {"doc_id": "report.pdf", "doc_type": "Research report", "question": "...", "answer": "12",
     "evidence_pages": "[3]", "evidence_sources": "['Table']", "answer_format": "Int", "pred": "12"}

`evidence_pages` and `evidence_sources` are strings holding Python-style lists (as in
`samples.json`) or JSON lists.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Iterable

from .rules import FORMATS, MODES, NOT_ANSWERABLE, ScoringError, score_answer

SAMPLE_FIELDS = ("doc_id", "doc_type", "question", "answer", "evidence_pages", "evidence_sources", "answer_format")
RESULT_FIELDS = (*SAMPLE_FIELDS, "pred")
MAX_LISTED_PROBLEMS = 20


class InputError(ValueError):
    """A result or samples file that cannot be scored; the message names every bad row and field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        text = f"{source}: " + ("; ".join(shown) if len(shown) == 1 else "\n  " + "\n  ".join(shown))
        if more > 0:
            text += f"\n  ... and {more} more"
        super().__init__(text)


def read_rows(path: str | Path) -> list[Any]:
    """A JSON list, or JSON Lines (one object per line; blank lines skipped)."""
    source = str(path)
    text = Path(path).read_text(encoding="utf-8")
    if not text.strip():
        raise InputError(source, ["the file is empty: no rows to score"])
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(source, [f"not valid JSON: {exc}"]) from None
    else:
        rows, problems = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                problems.append(
                    f"line {number}: not valid JSON ({exc.msg}); a JSON list or one object per line is expected"
                )
        if problems:
            raise InputError(source, problems)
    if not rows:
        raise InputError(source, ["the file holds no rows (an empty list)"])
    return rows


def parse_list_field(value: Any) -> list:
    """A list field of the benchmark's layout: a list, or a string holding a Python/JSON list."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, list):
            return parsed
    raise ValueError(f'expected a list such as "[3, 4]", got {value!r}'[:200])


def _row_name(index: int, row: Any) -> str:
    doc = row.get("doc_id") if isinstance(row, dict) else None
    return f"row {index + 1}" + (f" (doc_id {doc!r})" if isinstance(doc, str) else "")


def check_rows(rows: list[Any], source: str, fields: Iterable[str] = RESULT_FIELDS) -> list[dict]:
    """Every row must be an object with every field; answer_format known; list fields lists.

    Returns the rows with `evidence_pages` and `evidence_sources` parsed into lists; raises
    InputError naming each bad row and field (row numbers are 1-based, in file order).
    """
    fields = tuple(fields)
    problems: list[str] = []
    checked: list[dict] = []
    for index, row in enumerate(rows):
        name = _row_name(index, row)
        if not isinstance(row, dict):
            problems.append(f"{name}: expected an object with fields {', '.join(fields)}, got {type(row).__name__}")
            continue
        missing = [f for f in fields if f not in row]
        if missing:
            problems.append(f"{name}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
            continue
        out = dict(row)
        if row["answer_format"] not in FORMATS:
            problems.append(f"{name}: field answer_format is {row['answer_format']!r}; known: {', '.join(FORMATS)}")
        for key in ("answer", "pred"):
            value = row.get(key)
            if key in fields and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                problems.append(f"{name}: field {key} must be a string (or a number), got {value!r}"[:200])
        for key in ("evidence_pages", "evidence_sources"):
            try:
                out[key] = parse_list_field(row[key])
            except ValueError as exc:
                problems.append(f"{name}: field {key}: {exc}")
        checked.append(out)
    if problems:
        raise InputError(source, problems)
    return checked


def score_rows(rows: list[dict], mode: str) -> list[dict]:
    """Each row with `score` (0-1, or None for an error row) and `score_error` (None or the reason)."""
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; modes: {', '.join(MODES)}")
    out = []
    for row in rows:
        try:
            score, error = score_answer(row["answer"], row["pred"], row["answer_format"], mode), None
        except ScoringError as exc:
            score, error = None, str(exc)
        out.append({**row, "score": score, "score_error": error})
    return out


# ---------------------------------------------------------------------------------------------
# Aggregates.


def _mean(scores: list[float]) -> float:
    return sum(scores) / len(scores) if scores else 0.0


def _group(rows: list[dict]) -> dict:
    scores = [r["score"] for r in rows]
    return {"accuracy": _mean(scores), "n": len(scores)}


def accuracy_and_f1(rows: list[dict]) -> tuple[float, float]:
    """Accuracy = mean score. Recall = score sum over rows whose answer is not "Not answerable",
    divided by their count; precision = the same sum divided by the rows whose pred is not exactly
    "Not answerable"; F1 = 2PR / (P + R), 0 when a count or P + R is 0."""
    answerable = [r["score"] for r in rows if r["answer"] != NOT_ANSWERABLE]
    predicted = [r for r in rows if r["pred"] != NOT_ANSWERABLE]
    if not answerable or not predicted:
        return _mean([r["score"] for r in rows]), 0.0
    recall = sum(answerable) / len(answerable)
    precision = sum(answerable) / len(predicted)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    return _mean([r["score"] for r in rows]), f1


def aggregate(scored: list[dict]) -> dict:
    """The aggregates of scored rows (rows from check_rows + score_rows). Error rows count only
    in `errors`; every `n` counts the rows that were scored."""
    rows = [r for r in scored if r["score"] is not None]
    accuracy, f1 = accuracy_and_f1(rows)
    sources: dict[str, list[dict]] = {}
    doc_types: dict[str, list[dict]] = {}
    for row in rows:
        for source in row["evidence_sources"]:
            sources.setdefault(str(source), []).append(row)  # a row counts in each of its sources
        doc_types.setdefault(str(row["doc_type"]), []).append(row)
    return {
        "overall": {"accuracy": accuracy, "f1": f1, "n": len(rows)},
        "single_page": _group([r for r in rows if len(r["evidence_pages"]) == 1]),
        "cross_page": _group([r for r in rows if len(r["evidence_pages"]) != 1 and r["answer"] != NOT_ANSWERABLE]),
        "unanswerable": _group([r for r in rows if r["answer"] == NOT_ANSWERABLE]),
        "evidence_sources": {name: _group(group) for name, group in sources.items()},
        "doc_types": {name: _group(group) for name, group in doc_types.items()},
        "errors": len(scored) - len(rows),
    }


def score_file(path: str | Path, mode: str = "official") -> tuple[list[dict], dict]:
    """Read, check and score a result file: (scored rows in input order, aggregates)."""
    rows = check_rows(read_rows(path), str(path))
    scored = score_rows(rows, mode)
    return scored, aggregate(scored)


def rows_path(json_out: str | Path) -> Path:
    """Where the per-row scores go beside the aggregates file: OUT.json -> OUT.rows.jsonl."""
    out = Path(json_out)
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    return out.with_name(f"{stem}.rows.jsonl")


def write_outputs(
    json_out: str | Path, rows: list[dict], aggregates: dict, originals: list[dict] | None = None
) -> Path:
    """Write the aggregates (JSON) and the rows (JSON Lines, input order) atomically."""
    from ..io import write_text_atomic

    lines = []
    for index, row in enumerate(rows):
        base = dict(originals[index]) if originals is not None else dict(row)
        base["score"], base["score_error"] = row["score"], row["score_error"]
        lines.append(json.dumps(base, ensure_ascii=False, default=str))
    target = rows_path(json_out)
    write_text_atomic(target, "".join(line + "\n" for line in lines))
    write_text_atomic(json_out, json.dumps(aggregates, indent=2, ensure_ascii=False) + "\n")
    return target
