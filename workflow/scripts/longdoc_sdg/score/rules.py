"""Row scoring by MMLongBench-Doc's rules: one answer against the ground truth, by its format.

`score_answer(gt, pred, answer_format, mode)` returns a score in [0, 1]. In `official` mode a
row the benchmark's evaluation code would crash on raises `ScoringError` with the reason; the
`fixed` mode never raises for a known format. The differences are listed in `score/__init__.py`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

FORMATS = ("Int", "Float", "Str", "None", "List")
MODES = ("official", "fixed")
NOT_ANSWERABLE = "Not answerable"
ANLS_THRESHOLD = 0.5


class ScoringError(ValueError):
    """The official evaluation code would raise on this row (the whole run would stop there)."""


# ---------------------------------------------------------------------------------------------
# Shared pieces.

_PARENTHESISED = re.compile(r"\s*\([^)]*\)")
_EDGE_QUOTE = re.compile(r"^['\"]|['\"]$")


def clean(value: Any) -> str:
    """The benchmark's string cleaning: lower case, trimmed, parenthesised parts (with the spaces
    before them) removed, one leading and one trailing quote dropped, leading `$` and trailing
    `%` signs stripped."""
    text = str(value).lower().strip()
    text = _PARENTHESISED.sub("", text).strip()
    text = _EDGE_QUOTE.sub("", text).strip()
    text = text.strip().lstrip("$").strip()
    return text.strip().rstrip("%").strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        current = [j]
        for i, ca in enumerate(a, start=1):
            cost = 0 if ca == cb else 1
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + cost))
        previous = current
    return previous[-1]


def anls(gt: str, pred: str, official: bool = True) -> float:
    """1 - distance / longer length, 0 at or below the 0.5 cut-off. The official code takes the
    lengths of the upper-cased strings (longer for e.g. "ß" → "SS"); fixed takes the strings'."""
    if official:
        longest = max(len(gt.upper()), len(pred.upper()))
    else:
        longest = max(len(gt), len(pred))
    value = 1.0 - (levenshtein(gt, pred) / longest if longest else 0.0)
    return 0.0 if value <= ANLS_THRESHOLD else value


_DIGITS_PHONE = re.compile(r"\d+(?:-\d+|\s\d+)?")
_YEAR_MONTH_DAY = re.compile(r"\d{4}[-\s]\d{2}[-\s]\d{2}")
_YEAR_MONTH = re.compile(r"\d{4}[-\s]\d{2}")
_EMAIL = re.compile(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}")


def is_exact_match_string(text: str) -> bool:
    """Cleaned ground truths scored by equality instead of ANLS: URLs, code files, "page..."
    references, numbers and phone-like numbers, times, dates (YYYY-MM-DD, YYYY-MM), e-mails."""
    return (
        "https://" in text
        or text.endswith(".py")
        or text.endswith("ipynb")
        or text.startswith("page")
        or _DIGITS_PHONE.fullmatch(text) is not None
        or "a.m." in text
        or "p.m." in text
        or _YEAR_MONTH_DAY.fullmatch(text) is not None
        or _YEAR_MONTH.fullmatch(text) is not None
        or _EMAIL.fullmatch(text) is not None
    )


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decimals(number: float) -> int:
    """Decimal places of a float as Python prints it; 3 when the printed form has no dot."""
    printed = str(number)
    return len(printed.split(".")[-1]) if "." in printed else 3


def _float_matches(gt: float, pred: float) -> bool:
    """pred within 1% (relative to the larger) of gt, gt/100 or gt×100, or equal to one of them
    after rounding both to max(min(decimals of each), 2) places."""
    for candidate in (gt / 100, gt, gt * 100):
        if math.isclose(candidate, pred, rel_tol=0.01):
            return True
        places = max(min(_decimals(pred), _decimals(candidate)), 2)
        if round(pred, places) == round(candidate, places):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Official mode: the published evaluation, quirks included.


def _official_int(gt: Any, pred: Any) -> float:
    try:
        gt_number, pred_number = int(gt), int(float(pred))
    except Exception:
        # The official code then compares the untouched gt with an empty prediction.
        return float(gt == "")
    return float(gt_number == pred_number)


def _official_float(gt: Any, pred: Any) -> float:
    try:
        gt_number = float(clean(str(gt)))
    except ValueError:
        raise ScoringError(f"Float answer {gt!r} is not a number: the official code raises ValueError") from None
    try:
        pred_number = float(clean(str(pred)))
    except ValueError:
        return 0.0
    return float(_float_matches(gt_number, pred_number))


def _official_text(gt: Any, pred: Any) -> float:
    gt_text, pred_text = clean(gt), clean(pred)
    if is_exact_match_string(gt_text):
        return float(gt_text == pred_text)
    return anls(gt_text, pred_text)


def _official_list_value(value: Any, side: str) -> list:
    if isinstance(value, str) and value.startswith("["):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ScoringError(
                f"{side} {value[:80]!r} is not a Python literal: the official code passes it to eval "
                "(it raises on a malformed list, or runs it as code)"
            ) from None
    return value if isinstance(value, list) else [value]


def _official_list(gt: Any, pred: Any) -> float:
    gt_items = _official_list_value(gt, "answer")
    pred_items = _official_list_value(pred, "pred")
    if len(gt_items) != len(pred_items):
        return 0.0
    if not gt_items:
        raise ScoringError("answer and pred are both empty lists: the official code raises IndexError")
    gt_sorted = sorted(clean(item) for item in gt_items)
    pred_sorted = sorted(clean(item) for item in pred_items)
    if _parses_as_float(gt_sorted[0]) or is_exact_match_string(gt_sorted[0]):
        return float("-".join(gt_sorted) == "-".join(pred_sorted))
    return min(anls(g, p) for g, p in zip(gt_sorted, pred_sorted))


# ---------------------------------------------------------------------------------------------
# Fixed mode.

_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NOT_ANSWERABLE_TEXT = "not answerable"


def is_not_answerable(value: Any) -> bool:
    """A real "Not answerable" match: case, spacing, surrounding quotes and final full stops aside."""
    text = clean(value).rstrip(".!").strip()
    return " ".join(text.split()) == _NOT_ANSWERABLE_TEXT


def parse_number(value: Any) -> float | None:
    """A finite number from a cleaned string; thousands separators ("1,234.5") allowed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = clean(value)
        if _THOUSANDS.fullmatch(text):
            text = text.replace(",", "")
        try:
            number = float(text)
        except ValueError:
            return None
    return number if math.isfinite(number) else None


def _fixed_int(gt: Any, pred: Any) -> float:
    gt_number, pred_number = parse_number(gt), parse_number(pred)
    if gt_number is None or gt_number != int(gt_number):
        return _fixed_text(gt, pred)
    return float(pred_number is not None and pred_number == gt_number)


def _fixed_float(gt: Any, pred: Any) -> float:
    gt_number = parse_number(gt)
    if gt_number is None:
        return _fixed_text(gt, pred)
    pred_number = parse_number(pred)
    return float(pred_number is not None and _float_matches(gt_number, pred_number))


def _fixed_text(gt: Any, pred: Any) -> float:
    gt_text, pred_text = clean(gt), clean(pred)
    if is_exact_match_string(gt_text):
        return float(gt_text == pred_text)
    return anls(gt_text, pred_text, official=False)


def parse_list(value: Any) -> list:
    """A list from a JSON or Python literal; a bracketed text that is neither is split at commas
    (quotes around items dropped); anything else is a one-item list. Never evaluates code."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        return [value]
    text = value.strip()
    if not text.startswith("["):
        return [value]
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return parsed if isinstance(parsed, list) else [parsed]
    inner = text[1:-1] if text.endswith("]") else text[1:]
    return [item.strip().strip("'\"") for item in inner.split(",") if item.strip()]


def _fixed_list(gt: Any, pred: Any) -> float:
    gt_items, pred_items = parse_list(gt), parse_list(pred)
    if len(gt_items) != len(pred_items):
        return 0.0
    if not gt_items:
        return 1.0
    scores = []
    for g, p in zip(sorted(clean(i) for i in gt_items), sorted(clean(i) for i in pred_items)):
        exact = _parses_as_float(g) or is_exact_match_string(g)
        scores.append(float(g == p) if exact else anls(g, p, official=False))
    return min(scores)


# ---------------------------------------------------------------------------------------------

_OFFICIAL = {
    "Int": _official_int,
    "Float": _official_float,
    "Str": _official_text,
    "None": _official_text,
    "List": _official_list,
}
_FIXED = {"Int": _fixed_int, "Float": _fixed_float, "Str": _fixed_text, "None": _fixed_text, "List": _fixed_list}


def score_answer(gt: Any, pred: Any, answer_format: str, mode: str = "official") -> float:
    """Score one prediction against its ground truth under the ground truth's answer format."""
    if answer_format not in FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; known: {', '.join(FORMATS)}")
    if mode == "official":
        return float(_OFFICIAL[answer_format](gt, pred))
    if mode != "fixed":
        raise ValueError(f"unknown scoring mode {mode!r}; modes: {', '.join(MODES)}")
    gt_na, pred_na = is_not_answerable(gt), is_not_answerable(pred)
    if gt_na or pred_na:
        return float(gt_na and pred_na)
    return float(_FIXED[answer_format](gt, pred))
