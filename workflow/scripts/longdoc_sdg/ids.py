"""Stable identifiers and shard names."""

import hashlib

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
