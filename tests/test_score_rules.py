"""The MMLongBench-Doc scorer, row by row: every branch of every format in both modes.

Each expected score is worked out by hand from the rules in longdoc_sdg.score (distances and
lengths are spelled out in the comments), never computed with the code under test.
"""

from __future__ import annotations

import pytest

from longdoc_sdg.score import ScoringError, clean, score_answer
from longdoc_sdg.score.rules import is_exact_match_string, levenshtein


def official(gt, pred, fmt):
    return score_answer(gt, pred, fmt, "official")


def fixed(gt, pred, fmt):
    return score_answer(gt, pred, fmt, "fixed")


# ---------------------------------------------------------------------------------------------
# Shared pieces.


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("  Apple Inc. ", "apple inc."),
        ("Paris (France)", "paris"),
        ("5 (five) apples (red)", "5 apples"),
        ("'quoted'", "quoted"),
        ('"double"', "double"),
        ("$12.5", "12.5"),
        ("12.5%", "12.5"),
        ("$$3%%", "3"),  # every leading $ and trailing % goes
        ("''x''", "'x'"),  # only one quote at each end
        ("10 miles", "10 miles"),  # the benchmark's mile/million lines have no effect
    ],
)
def test_clean(raw, cleaned):
    assert clean(raw) == cleaned


def test_levenshtein_by_hand():
    assert levenshtein("kitten", "sitting") == 3  # k→s, e→i, +g
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2  # -f, +n


@pytest.mark.parametrize(
    ("text", "exact"),
    [
        ("see https://example.com", True),
        ("train.py", True),
        ("demo.ipynb", True),
        ("page 5", True),
        ("42", True),
        ("555-1234", True),
        ("555 1234", True),
        ("9 a.m.", True),
        ("5 p.m. sharp", True),
        ("2021-03-04", True),
        ("2021 03 04", True),
        ("2021-03", True),
        ("info@example.com", True),
        ("apple", False),
        ("12.5", False),
        ("http://example.com", False),  # only https
        ("1-2-3", False),  # one dash part at most; not a date either
    ],
)
def test_exact_match_strings(text, exact):
    assert is_exact_match_string(text) is exact


# ---------------------------------------------------------------------------------------------
# Int.


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("12", "12", 1.0),
        ("12", " 12 ", 1.0),
        ("12", "12.9", 1.0),  # int(float("12.9")) = 12: truncation
        ("12", "1.2e1", 1.0),
        ("12", "-12", 0.0),
        ("12", "13", 0.0),
        ("1234", "1,234", 0.0),  # float() refuses the separator
        ("12", "$12", 0.0),  # Int is not cleaned
        ("12", "twelve", 0.0),
        ("12", "inf", 0.0),  # int(inf) overflows: caught, scored 0
        ("12.0", "12", 0.0),  # int("12.0") fails: gt != "" so 0
        ("", "anything", 1.0),  # the failed parse compares gt with "": an empty gt always scores
        ("Not answerable", "Not answerable", 0.0),
    ],
)
def test_int_official(gt, pred, expected):
    assert official(gt, pred, "Int") == expected


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("12", "12", 1.0),
        ("1234", "1,234", 1.0),
        ("1234", "$1,234", 1.0),
        ("12", "12.0", 1.0),
        ("12", "12 (approx.)", 1.0),
        ("12", "12.9", 0.0),  # no truncation
        ("12", "1,2", 0.0),  # not a thousands separator
        ("12", "twelve", 0.0),
        ("12", "inf", 0.0),
        ("", "x", 0.0),  # Str: ANLS("", "x") = 1 - 1/1 = 0
        ("12.5", "12.5", 1.0),  # not an integer gt: Str, ANLS 1
        ("Not answerable", "not answerable", 1.0),
        ("12", "Not answerable", 0.0),
    ],
)
def test_int_fixed(gt, pred, expected):
    assert fixed(gt, pred, "Int") == expected


# ---------------------------------------------------------------------------------------------
# Float.


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("3.14", "3.14", 1.0),
        ("3.14", "3.16", 1.0),  # |0.02| <= 1% of 3.16 (0.0316)
        ("3.14", "3.2", 0.0),  # |0.06| > 0.032; rounded to 2 places: 3.2 != 3.14
        ("25", "0.25", 1.0),  # gt / 100
        ("0.25", "25%", 1.0),  # % stripped, gt × 100
        ("12.5%", "12.5", 1.0),
        ("$1.5", "1.5", 1.0),
        ("0.014", "0.01", 1.0),  # 29% off, but both round to 0.01 at max(min(2, 3), 2) = 2 places
        ("0.004", "0.0", 1.0),  # rounded to 2 places both are 0.0
        ("0.5", "0.52", 0.0),  # 4% off; 2 places: 0.52 != 0.5
        ("1500.5", "1,500.5", 0.0),
        ("1.5", "abc", 0.0),
        ("Not answerable", "Not answerable", None),  # crash: see below
    ],
)
def test_float_official(gt, pred, expected):
    if expected is None:
        with pytest.raises(ScoringError, match="not a number"):
            official(gt, pred, "Float")
    else:
        assert official(gt, pred, "Float") == expected


def test_float_official_crash_on_text_answer():
    with pytest.raises(ScoringError, match="ValueError"):
        official("about five", "5", "Float")


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("3.14", "3.16", 1.0),
        ("1500.5", "1,500.5", 1.0),
        ("0.25", "25%", 1.0),
        ("3.14", "3.2", 0.0),
        ("about five", "about five", 1.0),  # not a number: Str, ANLS 1
        ("Not answerable", "Not answerable", 1.0),
        ("3.14", "Not answerable", 0.0),
    ],
)
def test_float_fixed(gt, pred, expected):
    assert fixed(gt, pred, "Float") == expected


# ---------------------------------------------------------------------------------------------
# Str and None.


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("Apple Inc.", "apple inc.", 1.0),
        ("Barack Obama", "Barak Obama", 1 - 1 / 12),  # 1 deletion, longer length 12
        ("kitten", "sitting", 1 - 3 / 7),  # 0.571 > 0.5
        ("abcd", "abxy", 0.0),  # 1 - 2/4 = 0.5, not above the cut-off
        ("Paris (France)", "paris", 1.0),
        ("'Paris'", "Paris", 1.0),
        ("https://example.com/a", "https://example.com/b", 0.0),  # exact match only
        ("run.py", "run.pi", 0.0),
        ("Page 5", "page 5", 1.0),
        ("Page 5", "page 6", 0.0),
        ("555-1234", "555-1235", 0.0),
        ("2023", "2024", 0.0),  # digits: exact (ANLS would give 0.75)
        ("9 a.m.", "9 am", 0.0),
        ("2021-03-04", "2021-03-05", 0.0),
        ("info@example.com", "info@example.org", 0.0),
        ("straße", "strase", 1 - 1 / 7),  # 1 edit; official length is len("STRASSE") = 7
        ("not applicable", "Not answerable", 1 - 5 / 14),  # pplic → nswer: 5 substitutions
    ],
)
def test_str_official(gt, pred, expected):
    assert official(gt, pred, "Str") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("Not answerable", "Not answerable", 1.0),
        ("Not answerable", "not answerable.", 1 - 1 / 15),  # "not answerable." 15 chars, 1 insertion
        ("Not answerable", "answerable", 1 - 4 / 14),  # the cue: 0.714 for the opposite answer
        ("Not answerable", "12", 0.0),
    ],
)
def test_none_official_is_anls(gt, pred, expected):
    assert official(gt, pred, "None") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gt", "pred", "fmt", "expected"),
    [
        ("Barack Obama", "Barak Obama", "Str", 1 - 1 / 12),
        ("straße", "strase", "Str", 1 - 1 / 6),  # length of the strings: 6
        ("2023", "2024", "Str", 0.0),
        ("not applicable", "Not answerable", "Str", 0.0),  # a refusal never earns partial credit
        ("Not answerable", "Not answerable", "None", 1.0),
        ("Not answerable", "not answerable.", "None", 1.0),
        ("Not answerable", '"Not  Answerable"', "None", 1.0),
        ("Not answerable", "answerable", "None", 0.0),
        ("Not answerable", "Not answerable because page 3 is missing", "None", 0.0),
    ],
)
def test_str_and_none_fixed(gt, pred, fmt, expected):
    assert fixed(gt, pred, fmt) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# List.


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("['a', 'b']", "['b', 'a']", 1.0),  # sorted, then ANLS 1 each
        ("['apple', 'banana']", "['apple', 'bananas']", 1 - 1 / 7),  # min(1, 6/7)
        ("['1', '2']", "['2', '1']", 1.0),  # number items: "-"-joined equality
        ("[1, 2]", "['1', '3']", 0.0),
        ("['a', 'b']", "['a']", 0.0),  # different lengths
        ("['x']", "x", 1.0),  # a non-list prediction is a one-item list
        ("['Paris (France)', 'Rome']", "['rome', 'paris']", 1.0),  # items cleaned
        ("['1-2', '3']", "['1', '2-3']", 1.0),  # both join to "1-2-3"
        ("['2', 'apple']", "['2', 'apples']", 0.0),  # first sorted gt item "2" makes it all exact
        ("['a', 'b']", " ['a', 'b']", 0.0),  # leading space: not parsed, one item vs two
        ('["a", "b"]', '["a", "b"]', 1.0),  # JSON lists are Python literals too
    ],
)
def test_list_official(gt, pred, expected):
    assert official(gt, pred, "List") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gt", "pred", "match"),
    [
        ("['a', 'b']", "[a, b]", "pred"),  # unquoted names: eval would raise NameError
        ("['a', 'b'", "['a']", "answer"),  # unclosed
        ("[__import__('os').getpid()]", "['1']", "answer"),  # code: never run
        ("[]", "[]", "IndexError"),
    ],
)
def test_list_official_errors(gt, pred, match):
    with pytest.raises(ScoringError, match=match):
        official(gt, pred, "List")


@pytest.mark.parametrize(
    ("gt", "pred", "expected"),
    [
        ("['a', 'b']", "[a, b]", 1.0),  # split at commas
        ("['a', 'b']", " ['a', 'b']", 1.0),
        ("[]", "[]", 1.0),
        ("['a']", "[]", 0.0),
        ("['1-2', '3']", "['1', '2-3']", 0.0),  # item by item: "1-2" != "1"
        ("['2', 'apple']", "['2', 'apples']", 1 - 1 / 6),  # "2" exact 1, apple/apples ANLS 5/6
        ("['apple', 'banana']", "['apple', 'bananas']", 1 - 1 / 7),
        ("[__import__('os').getpid()]", "[__import__('os').getpid()]", 1.0),  # compared as text
        ("['a', 'b']", "Not answerable", 0.0),
    ],
)
def test_list_fixed(gt, pred, expected):
    assert fixed(gt, pred, "List") == pytest.approx(expected)


def test_unknown_format_and_mode():
    with pytest.raises(ValueError, match="unknown answer_format 'Bool'"):
        score_answer("1", "1", "Bool")
    with pytest.raises(ValueError, match="unknown scoring mode 'strict'"):
        score_answer("1", "1", "Int", "strict")
