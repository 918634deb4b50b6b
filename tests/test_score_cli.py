"""`longdoc-sdg score` on a fixture in the benchmark's result layout (44 rows over every format
and split, tests/data/score/mmlongbench_layout_results.json), against aggregates worked out by
hand, and its errors on bad input.

Per-row scores by hand (row: official / fixed), rows numbered from 1 as in the file:
  Int    1-10: 1/1, 1/0 (12.9 truncates), 0/1 (1,234), 0/0, 1/1, 0/0, 1/1, 1/1, 0/1 ($100), 1/1
  Float 11-18: 1/1, 1/1, 0/0, 0/1 (1,500.5), 1/1, 1/1, 0/0, error/1 (gt "about 5")
  Str   19-28: 1/1, 11/12, 4/7, 0/0, 0/0, 1/1, 0/0, 1/1, 9/14 / 0 (pred Not answerable), 6/7 / 5/6
  List  29-36: 1/1, 6/7, 1/1, 0/0, error/1 ([a, b]), 1/0 (joined 1-2-3), 0 / 5/6, error/1 ([] [])
  None  37-44: 1/1, 14/15 / 1, 5/7 / 0 ("answerable"), 0/0, 1/1, 1/1, 0/0, 1/1
Preds exactly "Not answerable": rows 17, 27, 37, 41, 42.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc_sdg.cli import main as cli_main

FIXTURE = Path(__file__).parent / "data" / "score" / "mmlongbench_layout_results.json"
TABLE, CHART, TEXT = "Table", "Chart", "Pure-text (Plain-text)"
FIGURE, LAYOUT = "Figure", "Generalized-text (Layout)"
REPORT, FINANCE, GUIDE = "Research report / Introduction", "Financial report", "Guidebook"

# fmt: off
OFFICIAL_ROWS = [1, 1, 0, 0, 1, 0, 1, 1, 0, 1,
                 1, 1, 0, 0, 1, 1, 0, None,
                 1, 11 / 12, 4 / 7, 0, 0, 1, 0, 1, 9 / 14, 6 / 7,
                 1, 6 / 7, 1, 0, None, 1, 0, None,
                 1, 14 / 15, 5 / 7, 0, 1, 1, 0, 1]
FIXED_ROWS = [1, 0, 1, 0, 1, 0, 1, 1, 1, 1,
              1, 1, 0, 1, 1, 1, 0, 1,
              1, 11 / 12, 4 / 7, 0, 0, 1, 0, 1, 0, 5 / 6,
              1, 6 / 7, 1, 0, 1, 0, 5 / 6, 1,
              1, 1, 0, 0, 1, 1, 0, 1]
# fmt: on


def f1(recall: float, precision: float) -> float:
    return 2 * recall * precision / (recall + precision)


# Official: 41 scored rows (18, 33, 36 are errors), 33 of them answerable, 36 preds not exactly
# "Not answerable".
OFFICIAL_ANSWERABLE_SUM = 16 + 11 / 12 + 4 / 7 + 9 / 14 + 6 / 7 + 6 / 7
OFFICIAL = {
    "overall": {
        "accuracy": (20 + 11 / 12 + 4 / 7 + 9 / 14 + 6 / 7 + 6 / 7 + 14 / 15 + 5 / 7) / 41,
        "f1": f1(OFFICIAL_ANSWERABLE_SUM / 33, OFFICIAL_ANSWERABLE_SUM / 36),
        "n": 41,
    },
    # rows 1 2 4 6 8 10 11 12 14 16 17 19 20 21 23 24 26 27 30 32 35 41
    "single_page": {"accuracy": (11 + 11 / 12 + 4 / 7 + 9 / 14 + 6 / 7) / 22, "n": 22},
    # rows 3 5 7 9 13 15 22 25 28 29 31 34 (7: answerable with no evidence page)
    "cross_page": {"accuracy": (6 + 6 / 7) / 12, "n": 12},
    "unanswerable": {"accuracy": (4 + 14 / 15 + 5 / 7) / 8, "n": 8},
    "evidence_sources": {
        TABLE: {"accuracy": (6 + 9 / 14) / 12, "n": 12},
        CHART: {"accuracy": 5 / 8, "n": 8},
        TEXT: {"accuracy": (4 + 11 / 12 + 6 / 7) / 7, "n": 7},
        FIGURE: {"accuracy": (1 + 4 / 7 + 6 / 7) / 5, "n": 5},
        LAYOUT: {"accuracy": 2 / 4, "n": 4},
    },
    "doc_types": {
        REPORT: {"accuracy": (10 + 11 / 12 + 6 / 7) / 14, "n": 14},
        FINANCE: {"accuracy": (5 + 9 / 14 + 14 / 15) / 14, "n": 14},
        GUIDE: {"accuracy": (5 + 4 / 7 + 6 / 7 + 5 / 7) / 13, "n": 13},
    },
    "errors": 3,
}

# Fixed: all 44 rows scored, 36 answerable, 39 preds not exactly "Not answerable".
FIXED_ANSWERABLE_SUM = 20 + 11 / 12 + 4 / 7 + 5 / 6 + 6 / 7 + 5 / 6
FIXED = {
    "overall": {
        "accuracy": (25 + 11 / 12 + 4 / 7 + 5 / 6 + 6 / 7 + 5 / 6) / 44,
        "f1": f1(FIXED_ANSWERABLE_SUM / 36, FIXED_ANSWERABLE_SUM / 39),
        "n": 44,
    },
    "single_page": {"accuracy": (12 + 11 / 12 + 4 / 7 + 6 / 7 + 5 / 6) / 23, "n": 23},
    "cross_page": {"accuracy": (9 + 5 / 6) / 14, "n": 14},
    "unanswerable": {"accuracy": 5 / 8, "n": 8},
    "evidence_sources": {
        TABLE: {"accuracy": 8 / 13, "n": 13},
        CHART: {"accuracy": 6 / 8, "n": 8},
        TEXT: {"accuracy": (4 + 11 / 12 + 5 / 6) / 7, "n": 7},
        FIGURE: {"accuracy": (2 + 4 / 7 + 6 / 7 + 5 / 6) / 6, "n": 6},
        LAYOUT: {"accuracy": 3 / 5, "n": 5},
    },
    "doc_types": {
        REPORT: {"accuracy": (9 + 11 / 12 + 5 / 6) / 14, "n": 14},
        FINANCE: {"accuracy": 9 / 15, "n": 15},
        GUIDE: {"accuracy": (7 + 4 / 7 + 6 / 7 + 5 / 6) / 15, "n": 15},
    },
    "errors": 0,
}


def run_score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longdoc_sdg.cli", "score", *args], capture_output=True, text=True, timeout=120
    )


def assert_aggregates(got: dict, expected: dict) -> None:
    assert list(got) == [
        "overall",
        "single_page",
        "cross_page",
        "unanswerable",
        "evidence_sources",
        "doc_types",
        "errors",
    ]
    assert set(got["overall"]) == {"accuracy", "f1", "n"}
    assert got["errors"] == expected["errors"]
    for key in ("overall", "single_page", "cross_page", "unanswerable"):
        assert got[key] == pytest.approx(expected[key]), key
    for key in ("evidence_sources", "doc_types"):
        assert set(got[key]) == set(expected[key]), key
        for name, group in expected[key].items():
            assert got[key][name] == pytest.approx(group), (key, name)


@pytest.mark.parametrize(
    ("mode", "expected", "row_scores"),
    [
        ("official", OFFICIAL, OFFICIAL_ROWS),
        ("fixed", FIXED, FIXED_ROWS),
    ],
)
def test_fixture_aggregates_by_hand(tmp_path, mode, expected, row_scores):
    out = tmp_path / f"{mode}.json"
    proc = run_score(str(FIXTURE), "--mode", mode, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert_aggregates(printed, expected)
    assert json.loads(out.read_text()) == printed

    lines = (tmp_path / f"{mode}.rows.jsonl").read_text().splitlines()
    originals = json.loads(FIXTURE.read_text())
    assert len(lines) == len(originals) == 44
    for number, (line, original, score) in enumerate(zip(lines, originals, row_scores), start=1):
        row = json.loads(line)
        # the input row comes back unchanged (same order), with its score beside it
        assert {k: v for k, v in row.items() if k not in ("score", "score_error")} == original
        if score is None:
            assert row["score"] is None and row["score_error"], number
        else:
            assert row["score"] == pytest.approx(score), number
            assert row["score_error"] is None
    if mode == "official":
        assert "3 row(s) could not be scored" in proc.stderr


def test_jsonl_input_scores_like_the_json_list(tmp_path, capsys):
    jsonl = tmp_path / "results.jsonl"
    rows = json.loads(FIXTURE.read_text())
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert cli_main(["score", str(jsonl), "--mode", "fixed"]) == 0
    assert_aggregates(json.loads(capsys.readouterr().out), FIXED)


def _bad_input(tmp_path, content: str, capsys) -> str:
    """Bad files are checked in-process (the same entry point, without a Python start-up each)."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert cli_main(["score", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    return err


def _row(**changes) -> dict:
    row = dict(json.loads(FIXTURE.read_text())[0])
    row.update(changes)
    return row


def test_missing_field_names_row_and_field(tmp_path, capsys):
    bad = _row()
    del bad["evidence_sources"]
    err = _bad_input(tmp_path, json.dumps([_row(), bad]), capsys)
    assert "row 2 (doc_id 'report-a.pdf'): missing field evidence_sources" in err


def test_unknown_answer_format_names_row_and_field(tmp_path, capsys):
    err = _bad_input(tmp_path, json.dumps([_row(), _row(), _row(answer_format="Bool")]), capsys)
    assert "row 3 (doc_id 'report-a.pdf'): field answer_format is 'Bool'" in err
    assert "Int, Float, Str, None, List" in err


def test_every_bad_row_is_listed(tmp_path, capsys):
    err = _bad_input(tmp_path, json.dumps([_row(pred=None), _row(), _row(evidence_pages="[3, 4")]), capsys)
    assert "row 1 (doc_id 'report-a.pdf'): field pred must be a string" in err
    assert "row 3 (doc_id 'report-a.pdf'): field evidence_pages: expected a list" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("  \n", "the file is empty"),
        ("[]", "no rows"),
        ('{"doc_id": 1}\nnot json\n', "line 2: not valid JSON"),
        ("[1, 2]", "row 1: expected an object"),
    ],
)
def test_empty_and_malformed_files(tmp_path, content, message, capsys):
    assert message in _bad_input(tmp_path, content, capsys)


def test_missing_file(tmp_path, capsys):
    assert cli_main(["score", str(tmp_path / "absent.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "absent.json" in err
