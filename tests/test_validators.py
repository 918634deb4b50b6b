"""Answer-format validators: one table of (format, answer, expected ok, expected reason)."""

import pytest

from longdoc_sdg.taxonomy import ANCHORED_TYPES, TEXT_TYPES, VISUAL_TYPES, AnswerFormat
from longdoc_sdg.validators import validate_answer, validate_for_type

F = AnswerFormat

CASES = [
    # multiple choice: "<LETTER>. <option>"
    (F.MULTIPLE_CHOICE, "B. 42 units", True, "ok"),
    (F.MULTIPLE_CHOICE, "B", False, "expected_letter_dot_option"),
    (F.MULTIPLE_CHOICE, "B) 42", False, "expected_letter_dot_option"),
    (F.MULTIPLE_CHOICE, "b. 42", False, "expected_letter_dot_option"),
    (F.MULTIPLE_CHOICE, "B.42", False, "expected_letter_dot_option"),
    # yes / no, true / false
    (F.YES_NO, "Yes", True, "ok"),
    (F.YES_NO, "No", True, "ok"),
    (F.YES_NO, "yes", False, "expected_yes_or_no"),
    (F.YES_NO, "Yes.", False, "expected_yes_or_no"),
    (F.TRUE_FALSE, "False", True, "ok"),
    (F.TRUE_FALSE, "Yes", False, "expected_true_or_false"),
    # integers: digits only
    (F.INT, "42", True, "ok"),
    (F.INT, "-7", True, "ok"),
    (F.INT, "1,234", False, "expected_integer"),
    (F.INT, "42 apples", False, "expected_integer"),
    (F.INT, "4.0", False, "expected_integer"),
    # floats: a decimal number
    (F.FLOAT, "3.75", True, "ok"),
    (F.FLOAT, "3", True, "ok"),
    (F.FLOAT, "-0.5", True, "ok"),
    (F.FLOAT, "3.75 m", False, "expected_decimal_number"),
    (F.FLOAT, "3.75%", False, "expected_decimal_number"),
    # percentages: number + %
    (F.PERCENT, "18.2%", True, "ok"),
    (F.PERCENT, "5%", True, "ok"),
    (F.PERCENT, "18.2", False, "expected_percentage"),
    (F.PERCENT, "18.2 %", False, "expected_percentage"),
    # number (text QA): any of them
    (F.NUMBER, "12", True, "ok"),
    (F.NUMBER, "12.5%", True, "ok"),
    (F.NUMBER, "twelve", False, "expected_number"),
    # lists: a one-line JSON array of scalars
    (F.LIST, '["Paris", "Rome"]', True, "ok"),
    (F.LIST, "[1, 2.5, 3]", True, "ok"),
    (F.LIST, "Paris, Rome", False, "expected_json_array"),
    (F.LIST, "['Paris', 'Rome']", False, "invalid_json_array"),
    (F.LIST, "[]", False, "empty_list"),
    (F.LIST, '[["a"], "b"]', False, "nested_list_items"),
    (F.LIST, '["a",\n"b"]', False, "multiline"),
    # not answerable: exact
    (F.NOT_ANSWERABLE, "Not answerable", True, "ok"),
    (F.NOT_ANSWERABLE, "not answerable", False, "expected_not_answerable"),
    (F.NOT_ANSWERABLE, "Unanswerable", False, "expected_not_answerable"),
    (F.INT, "Not answerable", False, "not_answerable_for_answerable_type"),
    # short text
    (F.SHORT_TEXT, "Annual report 2021", True, "ok"),
    (F.SHORT_TEXT, "x" * 201, False, "too_long"),
    # shared checks
    (F.SHORT_TEXT, "", False, "empty"),
    (F.SHORT_TEXT, None, False, "missing"),
    (F.SHORT_TEXT, "two\nlines", False, "multiline"),
    (F.INT, " 42", False, "surrounding_whitespace"),
]


@pytest.mark.parametrize("fmt, answer, ok, reason", CASES)
def test_validator_table(fmt, answer, ok, reason):
    assert validate_answer(fmt, answer) == (ok, reason)


def test_multiple_choice_letter_must_be_an_option_of_the_question():
    question = "Which year had the highest revenue?\nA. 2019\nB. 2020\nC. 2021\nD. 2022"
    assert validate_answer(F.MULTIPLE_CHOICE, "C. 2021", question) == (True, "ok")
    assert validate_answer(F.MULTIPLE_CHOICE, "E. 2023", question) == (False, "letter_not_among_options")
    # a question without recognisable options does not block the answer
    assert validate_answer(F.MULTIPLE_CHOICE, "E. 2023", "Pick one.") == (True, "ok")


def test_every_question_type_has_a_validator():
    for types, type_set in ((TEXT_TYPES, "text"), (VISUAL_TYPES, "visual"), (ANCHORED_TYPES, "anchored")):
        for qt in types:
            ok, reason = validate_for_type(qt.key, "", type_set=type_set)
            assert (ok, reason) == (False, "empty")
    assert validate_for_type("numerical_percentage", "12%", type_set="anchored") == (True, "ok")
    assert validate_for_type("nonsense", "12") == (False, "unknown_question_type")
