"""The context budget of one request: prompt text + image tokens + max_tokens must fit the served
model's max_model_len, or vLLM refuses the request with a 400 after it has queued.

Before a request goes out its tokens are estimated from the model family (how the server turns
an image into tokens) and the prompt's bytes. Bytes bound the text's tokens from above; where
that bound would shrink the images or refuse the request, the server's own tokenizer counts the
text (vLLM's /tokenize) and the request is fitted again. If it still does not fit, the images are
downscaled on the client, never below a floor of pixels per image; a request that cannot fit
even at the floor fails its row as `context_too_long` and is never sent.
"""

from __future__ import annotations

import base64
import contextvars
import io
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..io import atomic_path, get_logger
from .errors import RecordError
from .images import LazyImage

log = get_logger("engine.budget")

# Text: at most one token per UTF-8 byte. Byte-level BPE and byte-fallback tokenizers never do
# worse, so this bound holds for any of them (real ones average 3-4 bytes a token on English;
# RequestFitter.plan_counted asks the server for the real count where the bound is too tight).
TEXT_BYTES_PER_TOKEN = 1.0
# Chat template tokens around each message (role markers) and after the last (generation prompt).
MESSAGE_OVERHEAD_TOKENS = 8
PROMPT_OVERHEAD_TOKENS = 16
# Added to a count by the server's tokenizer: the text-only messages it counts may render a marker
# or two differently from the same messages with their images.
COUNTED_TEXT_MARGIN_TOKENS = 16
# An image whose size cannot be read is counted as this many pixels (a large page).
UNKNOWN_IMAGE_SIZE = (2048, 2048)


@dataclass(frozen=True)
class VisionFamily:
    """How a model family's server turns one image into context tokens.

    Images are resized to multiples of `pixels_per_token_side` (patch size x spatial merge)
    with their pixel count clamped to [min_pixels, max_pixels], then cost one token per
    merged patch plus `overhead` (start/end markers). `encoder_images`: the image goes to a
    separate encoder (encoder-decoder OCR models) and costs no decoder context at all.
    """

    name: str
    pixels_per_token_side: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int | None = None
    overhead: int = 2
    encoder_images: bool = False

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """The size the server's processor resizes an image to (Qwen-VL 'smart resize')."""
        f = self.pixels_per_token_side
        w = max(f, round(width / f) * f)
        h = max(f, round(height / f) * f)
        if self.max_pixels is not None and w * h > self.max_pixels:
            beta = math.sqrt(width * height / self.max_pixels)
            w = max(f, math.floor(width / beta / f) * f)
            h = max(f, math.floor(height / beta / f) * f)
        elif w * h < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (width * height))
            w = math.ceil(width * beta / f) * f
            h = math.ceil(height * beta / f) * f
        return w, h

    def image_tokens(self, width: int, height: int) -> int:
        if self.encoder_images:
            return 0
        w, h = self.resized(width, height)
        f = self.pixels_per_token_side
        return (w // f) * (h // f) + self.overhead


# The one table of model families. Keys are matched against the model's config.json
# `model_type` (a local model directory) or, normalised, against its name.
FAMILIES = {
    # 14-pixel patches merged 2x2: one token per 28x28 pixels.
    "qwen2-vl": VisionFamily("qwen2-vl", 28, 56 * 56, 28 * 28 * 16384),
    "qwen2.5-vl": VisionFamily("qwen2.5-vl", 28, 56 * 56, 28 * 28 * 16384),
    # 16-pixel patches merged 2x2: one token per 32x32 pixels (Qwen3.5 shares the vision tower).
    "qwen3-vl": VisionFamily("qwen3-vl", 32, 256 * 256, 32 * 32 * 16384),
    # Encoder-decoder: pages go to the vision encoder at a fixed size; the decoder context
    # (max_model_len) holds only the task tokens and the output.
    "nemotron-parse": VisionFamily("nemotron-parse", encoder_images=True),
}
# Unknown families: the most token-hungry common layout (28-pixel tokens) without a pixel cap.
DEFAULT_FAMILY = VisionFamily("unknown")

_MODEL_TYPES = {
    "qwen2_vl": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen3_vl_moe": "qwen3-vl",
    "qwen3_5": "qwen3-vl",
    "qwen3_5_moe": "qwen3-vl",
    "nemotron_parse": "nemotron-parse",
}
# Name patterns, most specific first.
_NAME_PATTERNS = (
    (re.compile(r"qwen3(\.5|-?vl)"), "qwen3-vl"),
    (re.compile(r"qwen2\.5-?vl"), "qwen2.5-vl"),
    (re.compile(r"qwen2-?vl"), "qwen2-vl"),
    (re.compile(r"nemotron-?parse"), "nemotron-parse"),
)


def family_by_name(*names: str | None) -> VisionFamily | None:
    for name in names:
        if not name:
            continue
        key = str(name).lower().replace("_", "-")
        for pattern, family in _NAME_PATTERNS:
            if pattern.search(key):
                return FAMILIES[family]
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def family_of_directory(model_dir: str | Path) -> VisionFamily | None:
    """The family of a local model directory, with the patch size, merge factor and pixel
    bounds its own config.json and processor config state."""
    root = Path(model_dir)
    config = _read_json(root / "config.json")
    family = FAMILIES.get(_MODEL_TYPES.get(str(config.get("model_type")), ""))
    if family is None or family.encoder_images:
        return family
    vision = config.get("vision_config") or {}
    patch, merge = vision.get("patch_size"), vision.get("spatial_merge_size")
    if isinstance(patch, int) and isinstance(merge, int):
        family = replace(family, pixels_per_token_side=patch * merge)
    for name in ("preprocessor_config.json", "processor_config.json"):
        processor = _read_json(root / name)
        processor = processor.get("image_processor", processor)
        size = processor.get("size") or {}
        low = processor.get("min_pixels") or size.get("shortest_edge")
        high = processor.get("max_pixels") or size.get("longest_edge")
        if isinstance(low, int) and isinstance(high, int):
            return replace(family, min_pixels=low, max_pixels=high)
    return family


def resolve_family(*models: str | None, mm_processor_kwargs: dict | None = None) -> VisionFamily:
    """The family of the first of `models` (model path or handle, served name) that is a local
    model directory or matches a known name; the server's --mm-processor-kwargs pixel bounds
    win over the family's defaults."""
    family = None
    for model in models:
        if model and Path(model).is_dir():
            family = family_of_directory(model)
            if family is not None:
                break
    family = family or family_by_name(*models) or DEFAULT_FAMILY
    kwargs = mm_processor_kwargs or {}
    if isinstance(kwargs.get("max_pixels"), int):
        family = replace(family, max_pixels=kwargs["max_pixels"])
    if isinstance(kwargs.get("min_pixels"), int):
        family = replace(family, min_pixels=kwargs["min_pixels"])
    return family


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / TEXT_BYTES_PER_TOKEN)


# ---------------------------------------------------------------------------------------------
# Images of a request: their sizes, and downscaled copies.


def png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """Width and height from a PNG header, or from Pillow for other formats."""
    head = bytes(data[:24])
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


def _file_path(url: str) -> Path | None:
    if not url.startswith("file://"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def _image_bytes(url: Any, head_only: bool) -> bytes | memoryview | None:
    if isinstance(url, LazyImage):
        return url.load()
    if isinstance(url, str) and url.startswith("data:"):
        _, _, encoded = url.partition(",")
        return base64.b64decode(encoded[:64] if head_only else encoded)
    path = _file_path(url) if isinstance(url, str) else None
    if path is not None:
        try:
            with open(path, "rb") as handle:
                return handle.read(64) if head_only else handle.read()
        except OSError:
            return None
    return None


def resize_png(data: bytes | memoryview, size: tuple[int, int]) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        out = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# The budget.


class ContextTooLong(RecordError):
    def __init__(self, message: str):
        super().__init__("context_too_long", message)


class TooManyImages(RecordError):
    def __init__(self, message: str):
        super().__init__("too_many_images", message)


@dataclass(frozen=True)
class Fit:
    """How a request fits: the size each image is sent at, its scale and the token estimate."""

    sizes: list[tuple[int, int]]
    scale: float  # 1.0: images as stored
    prompt_tokens: int  # estimated prompt tokens (text + images)


@dataclass(frozen=True)
class ContextBudget:
    max_model_len: int | None  # None: unknown, nothing is checked (sizes are still recorded)
    family: VisionFamily = DEFAULT_FAMILY
    min_image_pixels: int = 0
    source: str = ""  # where max_model_len came from, for messages
    max_images: int | None = None  # images per request the server accepts (--limit-mm-per-prompt)

    def _scaled(self, size: tuple[int, int], scale: float) -> tuple[int, int]:
        width, height = size
        floor = min(1.0, math.sqrt(self.min_image_pixels / (width * height))) if self.min_image_pixels else 0.0
        scale = max(scale, floor)
        if scale >= 1.0:
            return size
        # Multiples of the token side: the server then keeps the size as sent.
        f = self.family.pixels_per_token_side
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        return (max(f, w // f * f) if w >= f else w), (max(f, h // f * f) if h >= f else h)

    def floor_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The smallest size an image is sent at."""
        return self._scaled(size, 0.0)

    def _image_tokens(self, sizes: list[tuple[int, int]]) -> int:
        return sum(self.family.image_tokens(w, h) for w, h in sizes)

    def fit(self, sizes: list[tuple[int, int]], text: int, max_tokens: int | None) -> Fit:
        """The largest common scale (<= 1) at which `sizes` fit beside `text` prompt tokens and
        `max_tokens`; ContextTooLong when even the floor resolution does not, TooManyImages
        when the server would refuse the image count whatever their size."""
        if self.max_images is not None and len(sizes) > self.max_images:
            raise TooManyImages(
                f"{len(sizes)} images > {self.max_images} per request allowed by the deployment's "
                f"--limit-mm-per-prompt; not sent (lower the stage's page limit or raise the deployment's limit)"
            )
        full = self._image_tokens(sizes)
        if self.max_model_len is None:
            return Fit(list(sizes), 1.0, text + full)
        room = self.max_model_len - text - (max_tokens or 0)
        if full <= room:
            return Fit(list(sizes), 1.0, text + full)
        smallest = [self.floor_size(s) for s in sizes]
        at_floor = self._image_tokens(smallest)
        if at_floor > room or self.family.encoder_images:
            floor = f"{self.min_image_pixels:,} pixels per image" if sizes else "no images"
            raise ContextTooLong(
                f"estimated {text + at_floor + (max_tokens or 0):,} tokens ({text:,} text + {at_floor:,} for "
                f"{len(sizes)} images at the floor of {floor} + max_tokens {max_tokens or 0:,}) > max_model_len "
                f"{self.max_model_len:,} ({self.source or 'the endpoint'}, {self.family.name} images); "
                f"not sent"
            )
        low, high = 0.0, 1.0  # low fits, high does not
        for _ in range(30):
            middle = (low + high) / 2
            if self._image_tokens([self._scaled(s, middle) for s in sizes]) <= room:
                low = middle
            else:
                high = middle
        chosen = [self._scaled(s, low) for s in sizes]
        return Fit(chosen, low, text + self._image_tokens(chosen))


def deployment_hint(deployment: Any) -> dict[str, Any]:
    """What a served deployment (longdoc_sdg.serve.Deployment) says about its context: its
    --max-model-len, its model (path or handle: the image-token family) and the pixel bounds of
    any --mm-processor-kwargs in its extra_args."""
    kwargs = None
    args = list(deployment.extra_args)
    for i, arg in enumerate(args):
        value = None
        if arg == "--mm-processor-kwargs" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--mm-processor-kwargs="):
            value = arg.partition("=")[2]
        if value is not None:
            try:
                kwargs = json.loads(value)
            except ValueError:
                kwargs = None
    from ..serve.deployment import image_limit

    return {
        "max_model_len": deployment.max_model_len,
        "model": deployment.model,
        "mm_processor_kwargs": kwargs,
        "max_images": image_limit(deployment),
    }


def budget_for_endpoint(
    card: dict | None, hint: dict | None, served_name: str | None, min_image_pixels: int
) -> ContextBudget:
    """The budget of a stage's endpoint. max_model_len: the deployment's --max-model-len (hint)
    and the endpoint's /v1/models `max_model_len` (vLLM lists it); the smaller when both are
    known; else the endpoint's configured max_model_len (hint `fallback_max_model_len`). The
    family: from the deployment's model, the card's `root` (the model path vLLM
    serves) or the served name."""
    card, hint = card or {}, hint or {}
    limits = []
    if isinstance(hint.get("max_model_len"), int):
        limits.append((hint["max_model_len"], "the deployment's --max-model-len"))
    if isinstance(card.get("max_model_len"), int):
        limits.append((card["max_model_len"], "max_model_len listed by /v1/models"))
    if not limits and isinstance(hint.get("fallback_max_model_len"), int):
        limits.append((hint["fallback_max_model_len"], "models.ALIAS.endpoint.max_model_len"))
    limit, source = min(limits) if limits else (None, "")
    family = resolve_family(
        hint.get("model"), card.get("root"), served_name, mm_processor_kwargs=hint.get("mm_processor_kwargs")
    )
    max_images = hint.get("max_images") if isinstance(hint.get("max_images"), int) else None
    budget = ContextBudget(limit, family, min_image_pixels, source, max_images)
    log.info(
        "context budget: max_model_len %s (%s), %s images (%d px per token side, max %s px), floor %d px, "
        "at most %s images per request",
        limit,
        source or "unknown: not checked",
        family.name,
        family.pixels_per_token_side,
        family.max_pixels,
        min_image_pixels,
        max_images if max_images is not None else "any",
    )
    return budget


def message_text_tokens(messages: list[dict]) -> int:
    total = PROMPT_OVERHEAD_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    total += text_tokens(str(part.get("text") or ""))
    return total


def text_messages(messages: list[dict]) -> list[dict]:
    """`messages` without their image parts (what a tokenizer endpoint counts as text)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [p for p in content if not (isinstance(p, dict) and p.get("type") == "image_url")]
        out.append({**message, "content": content})
    return out


def _image_parts(messages: list[dict]) -> list[dict]:
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts.extend(p for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return parts


@dataclass
class RowImages:
    """The resolution a row's requests were sent at (the row's image_* columns)."""

    images: int = 0
    pixels: int = 0
    scale: float | None = None
    prompt_tokens: int | None = None
    sent: list[int] = field(default_factory=list)  # pixels of each image sent

    def add(self, fit: Fit) -> None:
        self.images = max(self.images, len(fit.sizes))
        self.sent.extend(w * h for w, h in fit.sizes)
        if fit.sizes:
            self.scale = fit.scale if self.scale is None else min(self.scale, fit.scale)
        self.prompt_tokens = max(self.prompt_tokens or 0, fit.prompt_tokens)

    def as_columns(self) -> dict[str, Any]:
        return {
            "image_count": self.images,
            "image_pixels": round(sum(self.sent) / len(self.sent)) if self.sent else None,
            "image_scale": round(self.scale, 4) if self.scale is not None else None,
            "est_prompt_tokens": self.prompt_tokens,
        }


# The row being processed (run_rows gives each row its own).
row_images: contextvars.ContextVar[RowImages | None] = contextvars.ContextVar("row_images", default=None)


class RequestFitter:
    """Fits one row's requests into a budget, reusing the downscaled copies across its calls."""

    def __init__(self, budget: ContextBudget):
        self.budget = budget
        self._copies: dict[tuple[int, tuple[int, int]], tuple[Any, Any]] = {}
        self._counts: dict[str, int | None] = {}

    def sizes(self, parts: list[dict]) -> list[tuple[int, int] | None]:
        out = []
        for part in parts:
            data = _image_bytes(part["image_url"]["url"], head_only=True)
            out.append(png_size(data) if data is not None else None)
        return out

    def plan(self, messages: list[dict], max_tokens: int | None) -> tuple[list[dict], list, Fit]:
        """The image parts, their sizes to send (None: as they are) and the fit, the text at its
        byte bound; raises ContextTooLong, recording the estimate on the row."""
        images = self._images(messages)
        return self._fit(images, message_text_tokens(messages), max_tokens)

    async def plan_counted(
        self,
        messages: list[dict],
        max_tokens: int | None,
        count: Callable[[list[dict]], Awaitable[int | None]],
    ) -> tuple[list[dict], list, Fit]:
        """`plan`, and where the byte bound would refuse the request or shrink its images, again
        with the text as `count` (the server's tokenizer) finds it; the bound stands when
        `count` gives None. Counts are kept for the row's later calls with the same text."""
        images = self._images(messages)
        bound = message_text_tokens(messages)
        try:
            planned = self._fit(images, bound, max_tokens, record=False)
        except ContextTooLong:
            planned = None
        if planned is not None and planned[2].scale >= 1.0:
            return planned
        text_only = text_messages(messages)
        key = json.dumps(text_only, sort_keys=True)
        if key not in self._counts:
            counted = await count(text_only)
            self._counts[key] = None if counted is None else counted + COUNTED_TEXT_MARGIN_TOKENS
        counted = self._counts[key]
        if counted is None or counted >= bound:
            return planned or self._fit(images, bound, max_tokens)
        return self._fit(images, counted, max_tokens)

    def _images(self, messages: list[dict]) -> tuple[list[dict], list, list[tuple[int, int]]]:
        """The image parts, their stored sizes (None: unreadable) and the sizes to budget for."""
        parts = _image_parts(messages)
        known = self.sizes(parts)
        return parts, known, [s or UNKNOWN_IMAGE_SIZE for s in known]

    def _fit(self, images: tuple, text: int, max_tokens: int | None, record: bool = True):
        """`images` (from `_images`) fitted beside `text` prompt tokens; a refusal is recorded on
        the row unless `record` is False (a first try that a count may overturn)."""
        parts, known, sizes = images
        try:
            fit = self.budget.fit(sizes, text, max_tokens)
        except ContextTooLong:
            if record:
                row = row_images.get()
                if row is not None:
                    estimate = text + self.budget._image_tokens([self.budget.floor_size(s) for s in sizes])
                    row.prompt_tokens = max(row.prompt_tokens or 0, estimate)
            raise
        targets = [None if k is None or t == k else t for k, t in zip(known, fit.sizes)]
        return parts, targets, fit

    def apply(self, messages: list[dict], parts: list[dict], targets: list) -> list[dict]:
        """`messages` with the image parts that need it replaced by downscaled copies (CPU work:
        run it off the event loop)."""
        if all(t is None for t in targets):
            return messages
        replaced: dict[int, dict] = {}
        for part, target in zip(parts, targets):
            if target is not None:
                replaced[id(part)] = {
                    "type": "image_url",
                    "image_url": {"url": self._copy(part["image_url"]["url"], target)},
                }
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                message = {**message, "content": [replaced.get(id(p), p) for p in content]}
            out.append(message)
        return out

    def _copy(self, url: Any, size: tuple[int, int]) -> Any:
        key = (id(url), size)
        if key in self._copies:
            return self._copies[key][1]
        data = _image_bytes(url, head_only=False)
        if data is None:
            raise RecordError("context_too_long", f"cannot read an image to downscale it ({url!r:.80})")
        png = resize_png(data, size)
        path = _file_path(url) if isinstance(url, str) else None
        if path is not None:
            # file mode: a sibling file the server may read, written once per size
            copy = path.with_name(f"{path.stem}.{size[0]}x{size[1]}.png")
            if not (copy.exists() and copy.stat().st_size == len(png)):
                with atomic_path(copy) as tmp:
                    tmp.write_bytes(png)
            new: Any = copy.resolve().as_uri()
        else:
            new = LazyImage.of(png)
        self._copies[key] = (url, new)  # keeps `url` alive so its id is not reused
        return new

    def record(self, fit: Fit) -> None:
        record = row_images.get()
        if record is not None:
            record.add(fit)


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "ContextBudget",
    "ContextTooLong",
    "TooManyImages",
    "budget_for_endpoint",
    "deployment_hint",
    "Fit",
    "RequestFitter",
    "RowImages",
    "VisionFamily",
    "family_by_name",
    "family_of_directory",
    "message_text_tokens",
    "png_size",
    "resize_png",
    "resolve_family",
    "row_images",
    "text_messages",
    "text_tokens",
]
