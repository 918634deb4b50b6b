"""Stable identifiers and shard names."""

import hashlib
from dataclasses import dataclass, replace

SHARD_DIGITS = 5


def stable_id(*parts: str, length: int = 16) -> str:
    """Hex digest of the parts; the same inputs always give the same id on every machine."""
    digest = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:length]


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


def safe_file_stem(identifier: str) -> str:
    """A file-name-safe stem for an id that may come from untrusted input (never used raw)."""
    return stable_id(identifier, length=24)


@dataclass(frozen=True)
class RowId:
    """A stage row's id, `stage[:judged stage]:doc_id[:unit][:qN]`, built and read only here.

    unit: "p0003" (a page), "3-6" (a window of pages), None (the whole document); question: the
    question number of a QA row; judged: on a judge row, the stage of the row it judges (the
    rest of the id is that row's).
    """

    stage: str
    doc_id: str
    unit: str | None = None
    question: int | None = None
    judged: str | None = None

    @classmethod
    def page(cls, stage: str, doc_id: str, page: int) -> "RowId":
        return cls(stage, doc_id, f"p{page:04d}")

    @classmethod
    def window(cls, stage: str, doc_id: str, start_page: int, end_page: int) -> "RowId":
        return cls(stage, doc_id, f"{start_page}-{end_page}")

    @classmethod
    def document(cls, stage: str, doc_id: str) -> "RowId":
        return cls(stage, doc_id)

    def questions(self, count: int) -> list["RowId"]:
        return [replace(self, question=k) for k in range(count)]

    def for_stage(self, stage: str) -> "RowId":
        """The same unit in another stage (a QA row made from an OCR or classify row)."""
        return replace(self, stage=stage, question=None, judged=None)

    def judged_by(self, stage: str) -> "RowId":
        return replace(self, stage=stage, judged=self.stage)

    def __str__(self) -> str:
        parts = [self.stage, *([self.judged] if self.judged else []), self.doc_id]
        if self.unit:
            parts.append(self.unit)
        if self.question is not None:
            parts.append(f"q{self.question}")
        return ":".join(parts)

    @classmethod
    def parse(cls, text: str) -> "RowId":
        from .registry import stage_order

        parts = text.split(":")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"not a row id: {text!r}")
        stage, rest = parts[0], parts[1:]
        judged = None
        if len(rest) > 1 and rest[0] in stage_order():
            judged, rest = rest[0], rest[1:]
        question = None
        if len(rest) > 1 and rest[-1][:1] == "q" and rest[-1][1:].isdigit():
            question, rest = int(rest[-1][1:]), rest[:-1]
        if len(rest) > 2:
            raise ValueError(f"not a row id: {text!r}")
        return cls(stage, rest[0], rest[1] if len(rest) == 2 else None, question, judged)

    @property
    def judged_row(self) -> "RowId":
        """On a judge row: the id of the row it judges."""
        if not self.judged:
            raise ValueError(f"{self} is not a judge row")
        return replace(self, stage=self.judged, judged=None)
