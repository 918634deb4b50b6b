"""Deterministic train/validation split by document.

A document's split depends only on (seed, doc_id): a hash to [0, 1) compared with the validation
fraction. All questions of a document, in every QA stage, land in the same split, and a document
keeps its split when the run grows.
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def doc_unit(doc_id: str, seed: str) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(doc_ids: Iterable[str], fraction: float, seed: str, min_validation: int = 0) -> dict[str, str]:
    """doc_id -> "train" | "validation".

    With `min_validation`, when the hash leaves fewer documents in validation (small runs), the
    train documents with the lowest hashes move there; at least one document always stays in train.
    """
    units = {doc_id: doc_unit(doc_id, seed) for doc_id in dict.fromkeys(doc_ids)}
    splits = {d: ("validation" if u < fraction else "train") for d, u in units.items()}
    if fraction > 0 and min_validation > 0:
        validation = sum(s == "validation" for s in splits.values())
        movable = sorted((u, d) for d, u in units.items() if splits[d] == "train")
        while validation < min_validation and len(movable) > 1:
            _, doc_id = movable.pop(0)
            splits[doc_id] = "validation"
            validation += 1
    return splits
