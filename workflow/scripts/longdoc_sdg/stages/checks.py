"""Relevance / correctness verdicts shared by stages 03 and 05 (small structured calls)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RelevanceVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # first, so the verdict follows the model's own argument; bounded so guided decoding ends
    reason: str = Field(max_length=600)
    verdict: Literal["Relevant", "Irrelevant"]


class CorrectnessVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(max_length=600)
    verdict: Literal["Correct", "Incorrect"]
