"""Image content parts for chat messages."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Callable


class LazyImage:
    """The `url` of a base64 image part whose bytes are read only when the request is encoded.

    A row waiting for the engine to admit its request then holds no image bytes and no base64
    text; the engine knows the encoded size from `size` before it reads anything
    (engine/transport.py `encode_body`). On the wire it is the same data URL `image_part` makes.
    """

    __slots__ = ("size", "mime", "_load")

    def __init__(self, size: int, load: Callable[[], bytes], mime: str = "image/png"):
        self.size = size  # bytes of the image (not of its base64)
        self.mime = mime
        self._load = load

    @classmethod
    def of(cls, data: bytes, mime: str = "image/png") -> "LazyImage":
        return cls(len(data), lambda: data, mime)

    def load(self) -> bytes:
        data = self._load()
        if len(data) != self.size:
            raise RuntimeError(f"lazy image changed size: {len(data)} bytes, {self.size} announced")
        return data

    def prefix(self) -> str:
        return f"data:{self.mime};base64,"

    def url_length(self) -> int:
        """Characters of the data URL."""
        return len(self.prefix()) + 4 * ((self.size + 2) // 3)

    def data_url(self) -> str:
        return self.prefix() + base64.b64encode(self.load()).decode("ascii")

    def __repr__(self) -> str:
        return f"LazyImage({self.mime}, {self.size} bytes)"


def lazy_image_part(size: int, load: Callable[[], bytes], mime: str = "image/png") -> dict:
    """A base64 `image_url` part like image_part's, with the bytes read at encoding time."""
    return {"type": "image_url", "image_url": {"url": LazyImage(size, load, mime)}}


def image_part(image: bytes | str | os.PathLike, mode: str = "base64", mime: str = "image/png") -> dict:
    """An `image_url` content part.

    mode "base64": the bytes (or the file's bytes) inline as a data URL.
    mode "file": a `file://` URL of an absolute path; the server must share the file system and
    allow the directory (vLLM `--allowed-local-media-path`), and no image bytes cross the wire.
    """
    if mode == "base64":
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    elif mode == "file":
        if isinstance(image, bytes):
            raise ValueError("image mode 'file' needs a path, not bytes (write the PNG to disk first)")
        url = Path(image).resolve().as_uri()
    else:
        raise ValueError(f"unknown image mode {mode!r}: use 'base64' or 'file'")
    return {"type": "image_url", "image_url": {"url": url}}
