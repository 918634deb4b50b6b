"""The one table from our question types to the benchmark's answer formats, and the export's
SQL reading of it."""

from __future__ import annotations

import duckdb
import pytest

from longdoc_sdg.export.common import answer_format_sql
from longdoc_sdg.taxonomy import QUESTION_TYPE_FORMATS, benchmark_format, format_of_answer


def test_question_type_table():
    assert QUESTION_TYPE_FORMATS == {
        "numerical_int": "Int",
        "numerical_float": "Float",
        "numerical_percentage": "Float",
        "list": "List",
        "not_answerable": "None",
        "multiple_choice": "Str",
        "yes_no": "Str",
        "true_false": "Str",
        "string": "Str",
        "layout": "Str",
        "short_answer": "Str",
        "numerical": None,  # text QA: a number of either kind
        "short": None,  # visual QA: number, text or list
    }


@pytest.mark.parametrize(
    ("qtype", "answer", "expected"),
    [
        ("numerical_int", "12", "Int"),
        ("numerical_int", "twelve", "Int"),  # the type decides, not the answer
        ("numerical_percentage", "12.5%", "Float"),
        ("string", "42", "Str"),
        ("numerical", "1,234", "Int"),
        ("numerical", "-3.5", "Float"),
        ("numerical", "12 %", "Float"),
        ("short", '["a", "b"]', "List"),
        ("short", "Not answerable", "None"),
        ("short", "Paris", "Str"),
        ("unknown_type", "7", "Int"),
        ("short", None, None),
    ],
)
def test_benchmark_format(qtype, answer, expected):
    assert benchmark_format(qtype, answer) == expected


@pytest.mark.parametrize("qtype", [*QUESTION_TYPE_FORMATS, "unknown_type", None])
@pytest.mark.parametrize("answer", ["12", "1,234", "3.5", "12%", "[1, 2]", "Not answerable", "B. 42 units", ""])
def test_sql_and_python_agree(qtype, answer):
    sql = answer_format_sql("a", "t")
    got = duckdb.execute(f"SELECT {sql} FROM (SELECT ?::VARCHAR AS a, ?::VARCHAR AS t)", [answer, qtype]).fetchall()
    assert got[0][0] == benchmark_format(qtype or "", answer)


def test_format_of_answer():
    assert [format_of_answer(a) for a in ("7", "0.5", "5%", "['x']", "Not answerable", "n/a", None)] == [
        "Int",
        "Float",
        "Float",
        "List",
        "None",
        "Str",
        "Str",
    ]
