"""Page categories, question types and their answer formats: the vocabulary every stage shares.

Names and weights follow the reference recipe's facts; descriptions are ours.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Mapping

# ---------------------------------------------------------------------------------------------
# Page classification (stage 04): 8 categories, 45 subcategories.


class Category(str, enum.Enum):
    QUANTITATIVE = "QUANTITATIVE"
    LOGIC_DIAGRAMS = "LOGIC_DIAGRAMS"
    HIERARCHICAL = "HIERARCHICAL"
    SPATIAL_RELATIONAL = "SPATIAL_RELATIONAL"
    SCHEMATIC = "SCHEMATIC"
    TABULAR = "TABULAR"
    INFOGRAPHIC = "INFOGRAPHIC"
    NONE = "NONE"


SUBCATEGORIES: dict[Category, tuple[str, ...]] = {
    Category.QUANTITATIVE: (
        "bar_chart",
        "line_graph",
        "scatter_plot",
        "pie_chart",
        "area_graph",
        "histogram",
        "box_plot",
        "heatmap",
        "bubble_chart",
    ),
    Category.LOGIC_DIAGRAMS: (
        "flowchart",
        "decision_tree",
        "process_map",
        "algorithm_diagram",
        "state_diagram",
        "sequence_diagram",
    ),
    Category.HIERARCHICAL: ("org_chart", "mind_map", "tree_structure", "taxonomy", "dendrogram"),
    Category.SPATIAL_RELATIONAL: (
        "floor_plan",
        "blueprint",
        "choropleth_map",
        "point_map",
        "topographic_map",
        "network_diagram",
    ),
    Category.SCHEMATIC: (
        "circuit_diagram",
        "mechanical_diagram",
        "anatomical_diagram",
        "wiring_diagram",
        "plumbing_diagram",
    ),
    Category.TABULAR: (
        "simple_table",
        "nested_table",
        "pivot_table",
        "comparison_table",
        "financial_table",
    ),
    Category.INFOGRAPHIC: (
        "timeline_infographic",
        "statistical_infographic",
        "process_infographic",
        "comparison_infographic",
    ),
    Category.NONE: ("decorative_image", "photograph", "plain_text", "generic_icon", "other"),
}

# One enum over all 45 subcategory names (they are unique across categories).
Subcategory = enum.Enum(  # type: ignore[misc]
    "Subcategory",
    {name.upper(): name for names in SUBCATEGORIES.values() for name in names},
    type=str,
)

# Subsets for the two shapes a classification can take (NONE-only, or reasoning categories).
ReasoningCategory = enum.Enum(  # type: ignore[misc]
    "ReasoningCategory", {c.name: c.value for c in Category if c is not Category.NONE}, type=str
)
ReasoningSubcategory = enum.Enum(  # type: ignore[misc]
    "ReasoningSubcategory",
    {n.upper(): n for c, names in SUBCATEGORIES.items() if c is not Category.NONE for n in names},
    type=str,
)
NoneSubcategory = enum.Enum(  # type: ignore[misc]
    "NoneSubcategory", {n.upper(): n for n in SUBCATEGORIES[Category.NONE]}, type=str
)

SUBCATEGORY_PARENT: dict[str, Category] = {name: cat for cat, names in SUBCATEGORIES.items() for name in names}

CATEGORY_HINTS: dict[Category, str] = {
    Category.QUANTITATIVE: "charts and plots that encode numbers graphically",
    Category.LOGIC_DIAGRAMS: "diagrams of steps, decisions, states or message order",
    Category.HIERARCHICAL: "parent/child structures such as organisation charts or trees",
    Category.SPATIAL_RELATIONAL: "maps, plans and node-link diagrams where position matters",
    Category.SCHEMATIC: "technical drawings of circuits, machines, bodies, wiring or pipes",
    Category.TABULAR: "tables whose cells can be looked up, compared or combined",
    Category.INFOGRAPHIC: "designed graphics mixing numbers, icons and text to tell a story",
    Category.NONE: "nothing to reason over: plain prose, photos, decoration, icons",
}


# ---------------------------------------------------------------------------------------------
# Answer formats and question types.


class AnswerFormat(str, enum.Enum):
    MULTIPLE_CHOICE = "multiple_choice"  # "<LETTER>. <option>"
    YES_NO = "yes_no"  # exactly Yes / No
    TRUE_FALSE = "true_false"  # exactly True / False
    INT = "int"  # digits only (optional leading minus)
    FLOAT = "float"  # a decimal number
    PERCENT = "percent"  # a number followed by %
    NUMBER = "number"  # int, float or percent
    LIST = "list"  # a one-line JSON array
    SHORT_TEXT = "short_text"  # a word, phrase or short sentence on one line
    NOT_ANSWERABLE = "not_answerable"  # exactly "Not answerable"


NOT_ANSWERABLE = "Not answerable"


@dataclass(frozen=True)
class QuestionType:
    key: str
    label: str
    answer_format: AnswerFormat
    guidance: str  # what the question should look like (goes into prompts)
    format_hint: str  # how the answer must be written (goes into prompts)


def _qt(key, label, fmt, guidance, hint) -> QuestionType:
    return QuestionType(key, label, fmt, guidance, hint)


_MC_HINT = (
    "List four options labelled A. to D. inside the question; the answer is the correct letter, "
    'a dot, a space and the option text, e.g. "B. 42 units".'
)
_YN_HINT = 'The answer is exactly "Yes" or "No".'
_NA_HINT = f'The answer is exactly "{NOT_ANSWERABLE}".'

# Anchored QA (stages 06/07/08): nine types shared by the three stages.
ANCHORED_TYPES: tuple[QuestionType, ...] = (
    _qt(
        "multiple_choice",
        "multiple choice",
        AnswerFormat.MULTIPLE_CHOICE,
        "A question with four labelled options of which exactly one is right.",
        _MC_HINT,
    ),
    _qt("yes_no", "yes or no", AnswerFormat.YES_NO, "A question whose truthful answer is a plain yes or no.", _YN_HINT),
    _qt(
        "string",
        "string (word, phrase or short sentence)",
        AnswerFormat.SHORT_TEXT,
        "A question answered by a name, term, phrase or one short sentence taken from the document.",
        "The answer is a word, phrase or short sentence on one line, no trailing explanation.",
    ),
    _qt(
        "layout",
        "layout",
        AnswerFormat.SHORT_TEXT,
        "A question about where or how content is laid out: which element sits above, beside or "
        "inside another, what a header, caption, legend or column contains, how many columns or "
        "panels there are.",
        "The answer is a word, number or short phrase on one line.",
    ),
    _qt(
        "numerical_int",
        "numerical (integer)",
        AnswerFormat.INT,
        "A question whose answer is a whole number: a count or a value read or computed from the content.",
        "Ask for an integer; the answer is digits only, without units, separators or words.",
    ),
    _qt(
        "numerical_float",
        "numerical (float)",
        AnswerFormat.FLOAT,
        "A question whose answer is a decimal number, read or computed from the content.",
        "State the rounding in the question (e.g. two decimal places); the answer is the bare "
        "decimal number, without units.",
    ),
    _qt(
        "numerical_percentage",
        "numerical (percentage)",
        AnswerFormat.PERCENT,
        "A question whose answer is a percentage, read or computed from the content.",
        "Ask for a percentage and the rounding; the answer is the number followed by %, e.g. 12.5%.",
    ),
    _qt(
        "list",
        "list of items",
        AnswerFormat.LIST,
        "A question whose answer is several items: names, values or labels collected from the content.",
        'Ask for the items as a JSON array; the answer is a one-line JSON array such as ["a", "b"].',
    ),
    _qt(
        "not_answerable",
        "not answerable",
        AnswerFormat.NOT_ANSWERABLE,
        "A near-miss: a question that looks answerable from the content but is not, because one "
        "qualifier (year, unit, entity, category, page) was changed so the content no longer "
        "supports it.",
        _NA_HINT,
    ),
)

# Visual QA (stage 05).
VISUAL_TYPES: tuple[QuestionType, ...] = (
    _qt(
        "multiple_choice",
        "multiple choices",
        AnswerFormat.MULTIPLE_CHOICE,
        "A question with four labelled options of which exactly one is right.",
        _MC_HINT,
    ),
    _qt("yes_no", "yes or no", AnswerFormat.YES_NO, "A question whose truthful answer is a plain yes or no.", _YN_HINT),
    _qt(
        "short",
        "number, word, phrase, short sentence, list of items",
        AnswerFormat.SHORT_TEXT,
        "A question answered by a number, a word, a phrase, a short sentence or a list of items.",
        "Say in the question what form the answer takes (a number with its rounding, a name, a "
        "JSON array for several items); the answer is one line.",
    ),
    _qt(
        "not_answerable",
        "not answerable",
        AnswerFormat.NOT_ANSWERABLE,
        "A near-miss question that the page seems to cover but cannot actually answer.",
        _NA_HINT,
    ),
)

# Text QA (stage 03): four types sampled uniformly.
TEXT_TYPES: tuple[QuestionType, ...] = (
    _qt(
        "multiple_choice",
        "multiple choice",
        AnswerFormat.MULTIPLE_CHOICE,
        "A question with four labelled options of which exactly one is right.",
        _MC_HINT,
    ),
    _qt(
        "true_false",
        "true or false",
        AnswerFormat.TRUE_FALSE,
        "A statement about the text to be judged true or false.",
        'The answer is exactly "True" or "False".',
    ),
    _qt(
        "short_answer",
        "short answer",
        AnswerFormat.SHORT_TEXT,
        "A question answered by a word, a name or a short phrase from the text.",
        "The answer is a word, phrase or short sentence on one line.",
    ),
    _qt(
        "numerical",
        "numerical question",
        AnswerFormat.NUMBER,
        "A question whose answer is a number read or computed from the text.",
        "The answer is a bare number (a % sign is allowed for percentages), without units.",
    ),
)

TYPE_SETS: dict[str, tuple[QuestionType, ...]] = {
    "text": TEXT_TYPES,
    "visual": VISUAL_TYPES,
    "anchored": ANCHORED_TYPES,
}


# MMLongBench-Doc's answer format (the rules it scores by, `longdoc_sdg.score`) for each of ours.
# NUMBER has no fixed one: it is read from the answer (`format_of_answer`).
BENCHMARK_FORMATS: dict[AnswerFormat, str | None] = {
    AnswerFormat.INT: "Int",
    AnswerFormat.FLOAT: "Float",
    AnswerFormat.PERCENT: "Float",
    AnswerFormat.NUMBER: None,
    AnswerFormat.LIST: "List",
    AnswerFormat.NOT_ANSWERABLE: "None",
    AnswerFormat.MULTIPLE_CHOICE: "Str",
    AnswerFormat.YES_NO: "Str",
    AnswerFormat.TRUE_FALSE: "Str",
    AnswerFormat.SHORT_TEXT: "Str",
}
# Types whose answers may be numbers, text or lists (visual QA's "short"): read from the answer.
MIXED_FORMAT_TYPES = frozenset({"short"})


def _question_type_formats() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for types in TYPE_SETS.values():
        for qt in types:
            fmt = None if qt.key in MIXED_FORMAT_TYPES else BENCHMARK_FORMATS[qt.answer_format]
            # One key, one format in every set: the table can be keyed by the type alone.
            assert out.get(qt.key, fmt) == fmt, f"question type {qt.key} maps to two benchmark formats"
            out[qt.key] = fmt
    return out


# Question type key -> benchmark answer format (None: read from the answer). The export's
# answer_format column, the report's "our mix vs the benchmark's" figure, the dataset card and
# the verify stage all take the format from here.
QUESTION_TYPE_FORMATS: dict[str, str | None] = _question_type_formats()

_LIST_ANSWER = re.compile(r"\[.*\]", re.DOTALL)
_INT_ANSWER = re.compile(r"[-+]?[0-9]{1,3}(,[0-9]{3})+|[-+]?[0-9]+")
_FLOAT_ANSWER = re.compile(r"[-+]?([0-9]+(,[0-9]{3})*)?\.[0-9]+ ?%?|[-+]?[0-9]+(,[0-9]{3})* ?%")


def format_of_answer(answer: str | None) -> str:
    """The benchmark format an answer reads as: "Not answerable" None, a bracketed list List, a
    whole number Int, a decimal or percentage Float, anything else Str."""
    text = (answer or "").strip()
    if text == NOT_ANSWERABLE:
        return "None"
    if _LIST_ANSWER.fullmatch(text):
        return "List"
    if _INT_ANSWER.fullmatch(text):
        return "Int"
    if _FLOAT_ANSWER.fullmatch(text):
        return "Float"
    return "Str"


def benchmark_format(question_type: str, answer: str | None = None) -> str | None:
    """The MMLongBench-Doc answer format of a question of this type; a mixed or unknown type takes
    the format its answer reads as (None without an answer)."""
    fmt = QUESTION_TYPE_FORMATS.get(question_type)
    if fmt is None and answer is not None:
        fmt = format_of_answer(answer)
    return fmt


def _weights(types: tuple[QuestionType, ...], values: tuple[float, ...]) -> dict[str, float]:
    assert len(types) == len(values)
    return {t.key: v for t, v in zip(types, values)}


DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    "text_qa": _weights(TEXT_TYPES, (1.0, 1.0, 1.0, 1.0)),
    "visual_qa": _weights(VISUAL_TYPES, (0.05, 0.1, 2.0, 0.01)),
    "single_page_qa": _weights(ANCHORED_TYPES, (0.025, 0.025, 1, 2, 2, 2, 2, 2, 0.2)),
    "windowed_qa": _weights(ANCHORED_TYPES, (0.025, 0.025, 2, 2, 2, 2, 2, 2, 0.2)),
    "whole_document_qa": _weights(ANCHORED_TYPES, (0.0019, 0.0019, 0.074, 0.149, 0.223, 0.149, 0.149, 0.223, 0.030)),
}


def find_type(key: str, type_set: str | None = None) -> QuestionType | None:
    """Look a question type up by key, in one set or (for the judge) in any set."""
    sets = [TYPE_SETS[type_set]] if type_set else list(TYPE_SETS.values())
    for types in sets:
        for t in types:
            if t.key == key:
                return t
    return None


# ---------------------------------------------------------------------------------------------
# Deterministic weighted sampling.


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) fixed by the parts (same on every machine and Python version)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sample_weighted(weights: Mapping[str, float], row_id: str, seed: int, salt: str = "qtype") -> str:
    """Pick a key with probability proportional to its weight, fixed by (seed, row_id).

    The walk follows the mapping's order, so callers pass weights in a canonical order.
    """
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError("at least one question type needs a positive weight")
    target = unit_hash(salt, seed, row_id) * total
    acc = 0.0
    last = None
    for key, weight in weights.items():
        if weight <= 0:
            continue
        acc += weight
        last = key
        if target < acc:
            return key
    return last  # float rounding at the very top end


def normalise_weights(weights: Mapping[str, float], types: tuple[QuestionType, ...]) -> dict[str, float]:
    """Validate keys against a type set and return the weights in the set's canonical order."""
    known = [t.key for t in types]
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"unknown question types {unknown}; known: {known}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("question type weights must be non-negative")
    ordered = {k: float(weights.get(k, 0.0)) for k in known}
    if sum(ordered.values()) <= 0:
        raise ValueError("at least one question type needs a positive weight")
    return ordered


# ---------------------------------------------------------------------------------------------
# Judge rubric (stage 09).


@dataclass(frozen=True)
class RubricItem:
    key: str
    label: str
    weight: float
    description: str


JUDGE_RUBRIC: tuple[RubricItem, ...] = (
    RubricItem(
        "answer_correctness",
        "Answer Correctness",
        0.35,
        "Is the answer right according to the pages? 5 = exactly right and complete; 0 = wrong or unsupported.",
    ),
    RubricItem(
        "training_signal_strength",
        "Training Signal Strength",
        0.30,
        "How much would a model learn from this item? High for multi-step reasoning over "
        "charts, tables, layouts or several pages; low for trivial lookups or guessable answers.",
    ),
    RubricItem(
        "question_quality",
        "Question Quality",
        0.15,
        "Is the question clear, unambiguous, self-contained and natural, with exactly one defensible answer?",
    ),
    RubricItem(
        "visual_grounding",
        "Visual Grounding",
        0.10,
        "Does answering require looking at the pages (values, figures, layout), and is the "
        "question anchored to identifiable content?",
    ),
    RubricItem(
        "format_compliance",
        "Format Compliance",
        0.10,
        "Does the answer follow the format the question type requires (letter option, "
        "Yes/No, bare number, percent sign, JSON list, exactly 'Not answerable')?",
    ),
)


def weighted_quality_score(scores: Mapping[str, int | float]) -> float:
    """Σ(score × weight) / 5, rounded to 2 decimals: 0 (worst) to 1 (best)."""
    total = sum(float(scores[item.key]) * item.weight for item in JUDGE_RUBRIC)
    return round(total / 5.0, 2)
