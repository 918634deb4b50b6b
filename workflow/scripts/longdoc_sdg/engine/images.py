"""Image content parts for chat messages."""

from __future__ import annotations

import base64
import os
from pathlib import Path


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
