"""Deterministic answer-format checks: every QA row gets `format_ok` and `format_reason`.

The checks mirror how MMLongBench-Doc scores answers (int exact, float/percent numeric, list as
items, "Not answerable" exact), so a row that fails here would be scored badly there too.
"""

from __future__ import annotations

import json
import re

from .taxonomy import NOT_ANSWERABLE, AnswerFormat, find_type

OK = "ok"

_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?(?:\d+\.\d+|\d+|\.\d+)")
_PERCENT = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)%")
_MC = re.compile(r"([A-Z])\. \S.*")
# Options inside a question: "A. foo", "A) foo", "(A) foo" at a line start or after whitespace.
_MC_OPTION = re.compile(r"(?:^|\s)\(?([A-Z])[.)]\s+\S", re.MULTILINE)

MAX_SHORT_TEXT_CHARS = 200


def _common(answer: str | None) -> tuple[str | None, str]:
    if answer is None:
        return None, "missing"
    text = answer.strip()
    if not text:
        return None, "empty"
    if "\n" in text or "\r" in text:
        return None, "multiline"
    if text != answer:
        return None, "surrounding_whitespace"
    return text, OK


def validate_answer(fmt: AnswerFormat | str, answer: str | None, question: str | None = None) -> tuple[bool, str]:
    """Return (ok, reason); reason is "ok" or a short snake_case code naming the first problem."""
    fmt = AnswerFormat(fmt)
    text, reason = _common(answer)
    if text is None:
        return False, reason
    if fmt is AnswerFormat.NOT_ANSWERABLE:
        return (True, OK) if text == NOT_ANSWERABLE else (False, "expected_not_answerable")
    if text.lower().rstrip(".") == NOT_ANSWERABLE.lower():
        return False, "not_answerable_for_answerable_type"
    if fmt is AnswerFormat.MULTIPLE_CHOICE:
        m = _MC.fullmatch(text)
        if not m:
            return False, "expected_letter_dot_option"
        if question is not None:
            letters = set(_MC_OPTION.findall(question))
            if letters and m.group(1) not in letters:
                return False, "letter_not_among_options"
        return True, OK
    if fmt is AnswerFormat.YES_NO:
        return (True, OK) if text in ("Yes", "No") else (False, "expected_yes_or_no")
    if fmt is AnswerFormat.TRUE_FALSE:
        return (True, OK) if text in ("True", "False") else (False, "expected_true_or_false")
    if fmt is AnswerFormat.INT:
        return (True, OK) if _INT.fullmatch(text) else (False, "expected_integer")
    if fmt is AnswerFormat.FLOAT:
        return (True, OK) if _FLOAT.fullmatch(text) else (False, "expected_decimal_number")
    if fmt is AnswerFormat.PERCENT:
        return (True, OK) if _PERCENT.fullmatch(text) else (False, "expected_percentage")
    if fmt is AnswerFormat.NUMBER:
        ok = _FLOAT.fullmatch(text) or _PERCENT.fullmatch(text)
        return (True, OK) if ok else (False, "expected_number")
    if fmt is AnswerFormat.LIST:
        if not text.startswith("["):
            return False, "expected_json_array"
        try:
            value = json.loads(text)
        except ValueError:
            return False, "invalid_json_array"
        if not isinstance(value, list):
            return False, "expected_json_array"
        if not value:
            return False, "empty_list"
        if any(isinstance(v, (list, dict)) or v is None for v in value):
            return False, "nested_list_items"
        return True, OK
    if fmt is AnswerFormat.SHORT_TEXT:
        if len(text) > MAX_SHORT_TEXT_CHARS:
            return False, "too_long"
        return True, OK
    raise ValueError(f"unhandled answer format {fmt}")  # pragma: no cover


def validate_for_type(
    question_type: str, answer: str | None, question: str | None = None, type_set: str | None = None
) -> tuple[bool, str]:
    """Validate against the answer format of a question-type key (see taxonomy)."""
    qt = find_type(question_type, type_set)
    if qt is None:
        return False, "unknown_question_type"
    return validate_answer(qt.answer_format, answer, question)
