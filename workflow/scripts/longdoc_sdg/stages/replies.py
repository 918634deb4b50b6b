"""Reading free-text replies: the tagged layout of stages 06-08 and bare questions/answers.

Why free text: with thinking models, asking for JSON made the model write JSON inside its
reasoning (the reference's dev note). A few XML-like tags are easy for the model to produce after
thinking, easy to parse, and tolerate multi-line questions (multiple-choice options).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

TAGS = ("question", "answer", "evidence_pages", "quality_score")


def tagged_regex(pages: list[int]) -> str:
    """vLLM structured_outputs regex for the tagged layout: guarantees a parseable reply (the
    grammar applies after thinking ends) whose evidence pages are among the pages shown.
    Questions may span lines; answers may not."""
    page = "(" + "|".join(str(p) for p in sorted(set(pages))) + ")"
    return (
        r"<question>\n[^<>]{1,1500}\n</question>\n"
        r"<answer>[^<>\n]{1,300}</answer>\n"
        rf"<evidence_pages>\[{page}(, {page}){{0,63}}\]</evidence_pages>\n"
        r"<quality_score>[012]</quality_score>"
    )


class AnchoredReply(BaseModel):
    """The same item as JSON (output_format 'json')."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=1500)
    answer: str = Field(max_length=300)
    evidence_pages: list[int] = Field(max_length=64)
    quality_score: int = Field(ge=0, le=2)


class ParseError(ValueError):
    pass


def _last_tag(text: str, tag: str) -> str | None:
    # The last complete block wins: models sometimes restate the layout before filling it in.
    matches = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
    return matches[-1].strip() if matches else None


def parse_tagged(text: str | None) -> dict:
    """question, answer, evidence_pages (list[int]), quality_score (0-2) from the tagged layout."""
    if not text:
        raise ParseError("empty reply")
    question = _last_tag(text, "question")
    answer = _last_tag(text, "answer")
    if not question:
        raise ParseError("no <question> block")
    if answer is None or not answer:
        raise ParseError("no <answer> block")
    score_text = _last_tag(text, "quality_score")
    if score_text is None:
        raise ParseError("no <quality_score> block")
    score_match = re.fullmatch(r"\s*([012])(?:\s*/\s*2)?\s*", score_text)
    if not score_match:
        raise ParseError(f"quality_score {score_text[:40]!r} is not 0, 1 or 2")
    pages_text = _last_tag(text, "evidence_pages") or ""
    evidence = [int(n) for n in re.findall(r"\d+", pages_text)][:64]
    return {
        "question": question,
        "answer": clean_answer(answer),
        "evidence_pages": sorted(set(evidence)),
        "quality_score": int(score_match.group(1)),
    }


@functools.lru_cache(maxsize=64)
def json_reply_model(pages: tuple[int, ...]) -> type[AnchoredReply]:
    """AnchoredReply whose evidence pages may only name the pages shown: the schema sent to the
    server as the grammar (the reply is still parsed with AnchoredReply and checked by
    `check_evidence`, so a server that ignores the grammar cannot slip a bad page through)."""
    allowed = Literal[tuple(sorted(set(pages)))]  # type: ignore[valid-type]
    return create_model(
        "AnchoredReply",
        __base__=AnchoredReply,
        evidence_pages=(list[allowed], Field(max_length=64)),
    )


class BadEvidence(ValueError):
    pass


def check_evidence(evidence: list[int], shown: list[int]) -> None:
    """Every evidence page must be one of the pages shown (1-based document page numbers)."""
    allowed = set(shown)
    bad = [p for p in evidence if p not in allowed]
    if bad:
        low, high = min(shown), max(shown)
        listed = ", ".join(str(p)[:24] for p in bad[:5])
        raise BadEvidence(
            f"evidence pages [{listed}{', ...' if len(bad) > 5 else ''}] are not among the pages shown ({low}-{high})"
            if allowed == set(range(low, high + 1))
            else f"evidence pages [{listed}] are not among the pages shown {sorted(allowed)[:64]}"
        )


def from_json_reply(reply: AnchoredReply) -> dict:
    return {
        "question": reply.question.strip(),
        "answer": clean_answer(reply.answer),
        "evidence_pages": sorted(set(reply.evidence_pages)),
        "quality_score": reply.quality_score,
    }


_LABEL = re.compile(r"^\s*(?:\*\*)?(question|answer|final answer)(?:\*\*)?\s*[:：]\s*", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """Strip a leading 'Answer:' label, wrapping quotes and surrounding whitespace."""
    text = _LABEL.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def clean_question(text: str) -> str:
    """A bare-question reply: drop a 'Question:' label and wrapping quotes."""
    text = _LABEL.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text


def evidence_json(pages: list[int]) -> str:
    return json.dumps(pages)
