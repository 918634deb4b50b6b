"""Relevance / correctness verdicts shared by stages 03 and 05 (small structured calls)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class RelevanceVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str  # first, so the verdict follows the model's own argument
    verdict: Literal["Relevant", "Irrelevant"]


class CorrectnessVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str
    verdict: Literal["Correct", "Incorrect"]
