"""Nemotron-Parse: request shape and the markup parser's edge cases."""

import json

import pytest

from longdoc_sdg.nemotron_parse import (
    REQUEST_SAMPLING,
    UNLABELED,
    build_messages,
    parse_markup,
    to_columns,
    unpad_bbox,
)


def el(x1, y1, text, x2, y2, label):
    return f"<x_{x1}><y_{y1}>{text}<x_{x2}><y_{y2}><class_{label}>"


def test_request_is_one_image_and_an_empty_text_with_greedy_sampling():
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = build_messages(part)
    assert messages == [{"role": "user", "content": [part, {"type": "text", "text": ""}]}]
    assert REQUEST_SAMPLING == {
        "temperature": 0.0,
        "top_k": 1,
        "repetition_penalty": 1.1,
        "skip_special_tokens": False,
    }


def test_plain_elements_in_reading_order():
    raw = el(0.1, 0.05, "Annual Report", 0.9, 0.08, "Title") + el(0.1, 0.1, "Revenue grew.", 0.9, 0.3, "Text")
    elements = parse_markup(raw)
    assert [(e.text, e.class_label) for e in elements] == [("Annual Report", "Title"), ("Revenue grew.", "Text")]
    assert elements[0].bbox == (0.1, 0.05, 0.9, 0.08)
    text, meta = to_columns(elements)
    assert text == "Annual Report\nRevenue grew."
    assert meta[1] == {"bbox": {"x1": 0.1, "y1": 0.1, "x2": 0.9, "y2": 0.3}, "class_label": "Text"}
    json.dumps(meta)  # JSON-serialisable as stored


def test_special_tokens_are_stripped():
    raw = "</s><s><predict_bbox><predict_classes><output_markdown>" + el(0, 0, "Hi<tbc>", 1, 1, "Text") + "</s>"
    (element,) = parse_markup(raw)
    assert element.text == "Hi"


def test_multiline_body_tables_and_markup_inside_text_are_kept():
    table = "\\begin{tabular}{ll}\na & b \\\\\n1 < 2 & 3\n\\end{tabular}"
    (element,) = parse_markup(el(0.2, 0.3, table, 0.8, 0.6, "Table"))
    assert element.class_label == "Table"
    assert "1 < 2 & 3" in element.text


def test_integer_and_out_of_range_coordinates_are_clamped_and_ordered():
    (element,) = parse_markup(el(0.9, 1.2, "x", 0.1, 0, "Text"))
    assert element.bbox == (0.1, 0.0, 0.9, 1.0)
    (element,) = parse_markup(el(0, 0, "y", 1, 1, "Text"))
    assert element.bbox == (0.0, 0.0, 1.0, 1.0)


def test_alias_classes_and_unknown_classes():
    elements = parse_markup(el(0, 0, "E=mc^2", 1, 0.1, "Inline-formula") + el(0, 0.2, "7", 1, 0.3, "Page-number"))
    assert [e.class_label for e in elements] == ["Formula", "Page-number"]


def test_text_cut_off_by_the_token_limit_is_kept_without_a_box():
    raw = el(0, 0, "Complete", 1, 0.1, "Text") + "<x_0.1><y_0.5>Truncated paragr"
    elements = parse_markup(raw)
    assert [(e.text, e.class_label, e.bbox) for e in elements][1] == ("Truncated paragr", UNLABELED, None)


def test_restarted_element_does_not_swallow_the_next_one():
    raw = "<x_0.1><y_0.1>lost start" + el(0.2, 0.2, "Full element", 0.9, 0.4, "Text")
    elements = parse_markup(raw)
    assert [(e.text, e.class_label) for e in elements] == [("lost start", UNLABELED), ("Full element", "Text")]


def test_stray_text_between_elements_and_whitespace():
    raw = el(0, 0, "A", 1, 0.1, "Text") + "\n  stray words \n" + el(0, 0.2, "B", 1, 0.3, "Text") + "\n"
    elements = parse_markup(raw)
    assert [e.text for e in elements] == ["A", "stray words", "B"]


def test_empty_elements_keep_metadata_but_add_no_text_line():
    raw = el(0, 0, "", 1, 0.5, "Picture") + el(0, 0.6, "Caption text", 1, 0.7, "Caption")
    elements = parse_markup(raw)
    text, meta = to_columns(elements)
    assert text == "Caption text"
    assert [m["class_label"] for m in meta] == ["Picture", "Caption"]


@pytest.mark.parametrize("raw", [None, "", "   ", "</s><s>"])
def test_nothing_to_parse(raw):
    assert parse_markup(raw) == []


def test_plain_text_without_markup_is_one_unlabeled_element():
    (element,) = parse_markup("just some words")
    assert (element.text, element.class_label, element.bbox) == ("just some words", UNLABELED, None)


def test_padded_canvas_coordinates_map_back_to_the_page():
    # a page half as wide as the canvas, centred: x fractions of the canvas 0.25..0.75 cover it
    canvas, page = (1000, 1000), (500, 1000)
    assert unpad_bbox((0.25, 0.0, 0.75, 1.0), canvas, page) == pytest.approx((0.0, 0.0, 1.0, 1.0))
    (element,) = parse_markup(el(0.5, 0.5, "mid", 0.75, 1.0, "Text"), canvas=canvas, page_size=page)
    assert element.bbox == pytest.approx((0.5, 0.5, 1.0, 1.0))
