"""What every stage is made of: a pydantic config, an output schema, prompt templates, an input
plan (which rows, in which order, with which ids) and an async per-row handler.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, get_args, get_origin

import jinja2
import jinja2.meta
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engine.errors import RecordError
from ..ids import safe_file_stem
from ..io import atomic_path
from ..pages import PageRecord, PageStore
from ..rowstore import BASE_FIELDS as COMMON_FIELDS
from ..taxonomy import NOT_ANSWERABLE, QuestionType, normalise_weights, sample_weighted, unit_hash

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
# Bump when a stage's row logic changes in a way that makes old journal rows wrong.
LOGIC_VERSION = "2"


# ---------------------------------------------------------------------------------------------
# Config building blocks.


def no_hash(**kwargs) -> dict:
    """Field metadata: the setting steers the run but never changes a row (kept out of hashes)."""
    return {"json_schema_extra": {"affects_rows": False}, **kwargs}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(Strict):
    """Sampling parameters; unset (null) ones are left to the server's defaults."""

    temperature: float | None = Field(None, ge=0, description="Softmax temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, description="Keep the k most likely tokens (vLLM; -1 = all).")
    min_p: float | None = Field(
        None, ge=0, le=1, description="Minimum token probability relative to the top one (vLLM)."
    )
    presence_penalty: float | None = Field(None, description="Penalty on tokens already present.")
    repetition_penalty: float | None = Field(None, gt=0, description="Multiplicative repetition penalty (vLLM).")
    reasoning_effort: Literal["low", "medium", "high"] | None = Field(
        None, description="Reasoning effort for models that take it (e.g. gpt-oss)."
    )
    extra_body: dict[str, Any] = Field(
        {}, description="More request fields passed as they are, e.g. chat_template_kwargs or skip_special_tokens."
    )

    def to_request(self) -> dict:
        out = {k: v for k, v in self.model_dump(exclude={"extra_body"}).items() if v is not None}
        out.update(self.extra_body)
        return out


class ImageTransportConfig(Strict):
    mode: Literal["base64", "file"] = Field(
        "base64",
        description="How page images reach the server: inline base64 data URLs, or file:// URLs of "
        "PNGs written under media_dir (needs a shared file system and vLLM --allowed-local-media-path).",
    )
    media_dir: str | None = Field(
        None,
        description="Folder for mode 'file' (absolute path the server can read); null = a '.media' "
        "folder next to the output shard.",
    )


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class StageConfig(Strict):
    """Settings every stage takes.

    Nested settings merge into the stage's defaults: `sampling: {temperature: 0.7}` keeps the
    stage's other sampling defaults, `question_type_weights: {layout: 0}` only changes layout.
    """

    @model_validator(mode="before")
    @classmethod
    def _merge_into_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            value = out.get(name)
            if not isinstance(value, dict):
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump()
            if isinstance(default, dict):
                out[name] = deep_merge(default, value)
        return out

    # Part of the hash on purpose: it changes which rows a shard holds, and a resumed journal
    # with rows outside the new selection would fail the accounting check.
    num_records: int | None = Field(
        None,
        ge=0,
        description="Process at most this many input records after the stage's filter (null: all): a seeded "
        "sample spread over the shard's documents and page positions (single-page and windowed QA: a seeded "
        "shuffle, as the reference samples them).",
    )
    seed: int = Field(0, description="Seed of the stage's deterministic choices (question types, sampled records).")


class ModelStageConfig(StageConfig):
    max_tokens: int = Field(4096, ge=1, description="Completion token budget per request (reasoning included).")
    sampling: SamplingConfig = Field(SamplingConfig(), description="Sampling parameters of the stage's requests.")
    image_transport: ImageTransportConfig = Field(
        ImageTransportConfig(), description="How images are sent.", **no_hash()
    )
    min_image_pixels: int = Field(
        500_000,
        ge=0,
        description="Floor of the client-side downscaling that fits a request into the model's max_model_len "
        "(prompt + image tokens + max_tokens): images are never sent smaller than about this many pixels "
        "(500,000: a letter page at ~75 dpi, text still legible). A request that does not fit even at the floor "
        "fails its row as context_too_long without being sent.",
    )


def check_weights(weights: dict[str, float], types: tuple[QuestionType, ...]) -> dict[str, float]:
    return normalise_weights(weights, types)


# ---------------------------------------------------------------------------------------------
# Output schemas: common columns + the stage's closed pydantic model.


class StageOutput(BaseModel):
    """Base of every stage's generated columns; closed so a typo is an error, not a new column."""

    model_config = ConfigDict(extra="forbid")


_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(annotation: Any) -> pa.DataType:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not None and args and get_origin(annotation) is not list:
        annotation = args[0]  # Optional[X] / X | None
    if get_origin(annotation) is list:
        (inner,) = get_args(annotation)
        return pa.list_(pa.int32() if inner is int else _arrow_type(inner))
    if get_origin(annotation) is Literal:
        return _ARROW_TYPES[type(get_args(annotation)[0])]
    if annotation in _ARROW_TYPES:
        return _ARROW_TYPES[annotation]
    raise TypeError(f"no arrow type for output annotation {annotation!r}; store nested values as JSON str")


def arrow_schema(output_model: type[StageOutput]) -> pa.Schema:
    fields = list(COMMON_FIELDS)
    for name, info in output_model.model_fields.items():
        fields.append(pa.field(name, _arrow_type(info.annotation)))
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------
# Prompt templates.


def _template_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.is_absolute() or os.sep in name or candidate.exists():
        if not candidate.exists():
            raise FileNotFoundError(f"prompt template {name} does not exist")
        return candidate.resolve()
    path = PROMPTS_DIR / name
    if not path.exists():
        known = sorted(p.name for p in PROMPTS_DIR.glob("*.j2"))
        raise FileNotFoundError(f"prompt template {name!r} is not in {PROMPTS_DIR}; known: {known}")
    return path


def _environment(path: Path) -> jinja2.Environment:
    # A custom template may include our partials, and its own neighbours first.
    loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(path.parent)), jinja2.FileSystemLoader(str(PROMPTS_DIR))])
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


@dataclass
class Template:
    name: str
    path: Path
    _template: jinja2.Template = field(repr=False)

    def render(self, **context: Any) -> str:
        context.setdefault("not_answerable", NOT_ANSWERABLE)
        text = self._template.render(**context)
        return re.sub(r"\n{3,}", "\n\n", text).strip()


def load_template(name: str) -> Template:
    path = _template_path(name)
    env = _environment(path)
    return Template(name, path, env.get_template(path.name))


def template_sources(name: str) -> dict[str, str]:
    """The template's text and that of everything it includes, by name (for hashing)."""
    path = _template_path(name)
    env = _environment(path)
    seen: dict[str, str] = {}
    todo = [path.name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        source, _, _ = env.loader.get_source(env, current)
        seen[current] = source
        todo.extend(t for t in jinja2.meta.find_referenced_templates(env.parse(source)) if t)
    return seen


# ---------------------------------------------------------------------------------------------
# Row plans.


@dataclass
class RowTask:
    """One output row to produce: its id, what it is about, and the stage's own inputs."""

    row_id: str
    doc_id: str
    pages: list[int]
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """The rows a stage will produce from its inputs (ids known before any work starts)."""

    expected_ids: list[str]
    tasks: Callable[[], Iterator[RowTask]]  # streams the tasks in input order


def iter_rows(path: str, columns: list[str] | None = None, batch_size: int = 512) -> Iterator[dict]:
    """Stream a parquet file's rows as dicts, a batch at a time."""
    pf = pq.ParquetFile(path)
    if columns is not None:
        names = set(pf.schema_arrow.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}")
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        yield from batch.to_pylist()


def select_records(
    keys: Iterable[str | tuple[str, str]], num_records: int | None, seed: int, shuffled: bool
) -> set[str] | None:
    """Which records to keep when `num_records` is set (None = all), always seeded by `seed`.

    shuffled: a seeded random N, ranked by a hash of (seed, key), so growing N keeps every record
    picked before (the reference samples 06/07 this way). Otherwise a spread sample: `keys` are
    (document, key) pairs in page order (a bare key is its own document) and the N records are
    shared out round-robin over the documents in a seeded order, each document's share taken one
    from each equal slice of its pages, so the sample reaches every document (while N allows) and
    late pages as well as openings.
    """
    if num_records is None:
        return None
    if not shuffled:
        return _spread_sample(keys, num_records, seed)
    import heapq

    heap: list[tuple[float, str]] = []  # max-heap of the N smallest ranks (negated)
    for key in keys:
        rank = unit_hash("select", seed, key)
        if len(heap) < num_records:
            heapq.heappush(heap, (-rank, key))
        elif num_records and -heap[0][0] > rank:
            heapq.heapreplace(heap, (-rank, key))
    return {key for _, key in heap}


def _spread_sample(keys: Iterable[str | tuple[str, str]], num_records: int, seed: int) -> set[str]:
    groups: dict[str, list[str]] = {}
    for item in keys:
        group, key = item if isinstance(item, tuple) else (item, item)
        groups.setdefault(group, []).append(key)
    order = sorted(groups, key=lambda g: (unit_hash("spread", seed, g), g))
    quota = dict.fromkeys(order, 0)
    left = min(num_records, sum(len(v) for v in groups.values()))
    while left:
        for group in order:
            if left and quota[group] < len(groups[group]):
                quota[group] += 1
                left -= 1
    picked: set[str] = set()
    for group in order:
        members, share = groups[group], quota[group]
        for i in range(share):
            low, high = i * len(members) // share, (i + 1) * len(members) // share
            picked.add(members[low + int(unit_hash("slice", seed, group, i) * (high - low))])
    return picked


def sample_question_type(weights: dict[str, float], row_id: str, seed: int) -> str:
    return sample_weighted(weights, row_id, seed)


# ---------------------------------------------------------------------------------------------
# Runtime context handed to row handlers.


class RowCalls:
    """A row's door to the engine. Token usage needs no bookkeeping here: run_rows gives every
    row its own accumulator (a context variable) that the engine adds each reply to, failed
    replies and calls made side by side included.

    With a context budget every request is fitted into the model's max_model_len first: its
    images downscaled if needed (copies shared by the row's calls), or the row failed as
    context_too_long before anything is sent (engine/budget.py)."""

    def __init__(self, engine: Any, budget: Any = None):
        from ..engine.budget import RequestFitter

        self.engine = engine
        self.fitter = RequestFitter(budget) if budget is not None else None

    async def chat(
        self,
        messages: list[dict],
        *,
        sampling: dict,
        max_tokens: int,
        response_model: type[BaseModel] | None = None,
        extra_body: dict | None = None,
    ):
        if self.fitter is not None:
            template_kwargs = {**sampling, **(extra_body or {})}.get("chat_template_kwargs")

            def count(text_only: list[dict]):
                return self.engine.count_prompt_tokens(text_only, template_kwargs)

            parts, targets, fit = await self.fitter.plan_counted(messages, max_tokens, count)
            if any(t is not None for t in targets):
                messages = await asyncio.to_thread(self.fitter.apply, messages, parts, targets)
            self.fitter.record(fit)
        return await self.engine.chat(
            messages,
            response_model=response_model,
            sampling=sampling,
            max_tokens=max_tokens,
            extra_body=extra_body,
        )


@dataclass
class StageContext:
    """What handlers need besides their task: config, templates, page images, model name."""

    config: Any
    templates: dict[str, Template]
    page_store: PageStore | None
    output_path: str
    model: str

    def pages(self, doc_id: str, pages: list[int]) -> list[PageRecord]:
        if self.page_store is None:
            raise RuntimeError("this stage has no pages input")
        try:
            return self.page_store.get_pages(doc_id, pages)
        except KeyError as exc:
            # A page the seed could not render is this row's problem, not the job's.
            raise StageFailure("missing_pages", str(exc)) from None

    def media_dir(self) -> Path:
        transport = self.config.image_transport
        if transport.media_dir:
            return Path(transport.media_dir)
        return Path(self.output_path).resolve().parent / ".media"

    def image_parts(self, records: list[PageRecord]) -> list[dict]:
        """One image part per page. base64: the url is a LazyImage the engine encodes only when
        it sends the request, reading the PNG from the page store (the record's bytes when there
        is no store), so the records need not live while the request waits."""
        from ..engine.images import LazyImage, image_part, lazy_image_part

        mode = self.config.image_transport.mode
        if mode == "base64":
            store = self.page_store
            if store is None:
                return [{"type": "image_url", "image_url": {"url": LazyImage.of(r.png)}} for r in records]
            return [
                lazy_image_part(len(r.png), functools.partial(store.png_view, r.doc_id, r.page_number)) for r in records
            ]
        parts = []
        for r in records:
            path = self.media_dir() / safe_file_stem(r.doc_id) / f"p{r.page_number:05d}.png"
            # Same page, same bytes: skip rewriting a file another row or stage already wrote.
            if not (path.exists() and path.stat().st_size == len(r.png)):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(r.png)
            parts.append(image_part(path, mode="file"))
        return parts

    def labelled_images(self, records: list[PageRecord]) -> list[dict]:
        """Interleave "Page N:" labels with the images so the model can cite page numbers."""
        return _labelled([r.page_number for r in records], self.image_parts(records))

    def page_images(self, doc_id: str, pages: list[int], labelled: bool = False) -> list[dict]:
        """The image parts of a row's pages, "Page N:"-labelled if asked. In base64 mode they
        hold no page bytes and no page is copied out of the store: keep these, not records,
        across the request's await."""
        from ..engine.images import lazy_image_part

        if self.config.image_transport.mode != "base64" or self.page_store is None:
            records = self.pages(doc_id, pages)
            return self.labelled_images(records) if labelled else self.image_parts(records)
        store = self.page_store
        try:
            sizes = store.page_sizes(doc_id, pages)
        except KeyError as exc:
            raise StageFailure("missing_pages", str(exc)) from None
        parts = [
            lazy_image_part(size, functools.partial(store.png_view, doc_id, page)) for page, size in zip(pages, sizes)
        ]
        return _labelled(pages, parts) if labelled else parts


def _labelled(pages: list[int], images: list[dict]) -> list[dict]:
    parts: list[dict] = []
    for page, image in zip(pages, images):
        parts.append({"type": "text", "text": f"Page {page}:"})
        parts.append(image)
    return parts


async def gather_or_cancel(*coros):
    """Run calls side by side; if one fails, cancel the others (no orphan requests) and re-raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def user_message(parts: list[dict] | str) -> list[dict]:
    return [{"role": "user", "content": parts}]


class StageFailure(RecordError):
    """A row failure our own checks found (not the engine's), e.g. an unparseable reply."""


# ---------------------------------------------------------------------------------------------
# The stage declaration.


class Stage:
    """A stage's row logic: subclasses fill in the class attributes and the three methods. Its
    name, inputs and description come from its registry entry (longdoc_sdg.registry)."""

    config_model: ClassVar[type[StageConfig]]
    output_model: ClassVar[type[StageOutput]]
    # Structured replies the stage asks for: their schemas shape the rows, so they are hashed.
    response_models: ClassVar[tuple[type[BaseModel], ...]] = ()

    def __init__(self, spec: Any):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.summary

    @property
    def input_keys(self) -> tuple[str, ...]:
        return self.spec.inputs

    @property
    def pages_key(self) -> str | None:
        """The input holding page images, if any."""
        return "pages" if "pages" in self.spec.inputs else None

    def template_names(self, config: Any) -> dict[str, str]:
        """Role → template name, read from the config's *_template fields."""
        return {name: getattr(config, name) for name in type(config).model_fields if name.endswith("_template")}

    def needs_endpoint(self, config: Any) -> bool:
        return True

    def serves_on_demand(self, config: Any) -> bool:
        """Whether a shard's own rows decide if it needs the model (needs_endpoint_for): its
        deployment is then started by the first job that needs it, never for nothing."""
        return False

    def needs_endpoint_for(self, config: Any, inputs: dict[str, str]) -> bool:
        """Whether this shard's rows need the model."""
        return self.needs_endpoint(config)

    def plan(self, config: Any, inputs: dict[str, str]) -> Plan:
        raise NotImplementedError

    async def process(self, task: RowTask, ctx: StageContext, calls: RowCalls) -> dict:
        """Return the generated columns of one row (validated against output_model)."""
        raise NotImplementedError

    def process_sync(self, task: RowTask, ctx: StageContext) -> dict:
        """Rows that need no model (e.g. pdf-text OCR)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Hashing.


def hashed_settings(config: BaseModel) -> dict:
    """The config without the settings that never change a row."""

    def strip(model: BaseModel) -> dict:
        out = {}
        for name, info in type(model).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("affects_rows") is False:
                continue
            value = getattr(model, name)
            out[name] = strip(value) if isinstance(value, BaseModel) else value
        return out

    return json.loads(json.dumps(strip(config), default=str))


def config_hash(stage: Stage, config: BaseModel, model: str | None = None) -> str:
    """Hash of what makes a row: settings, prompt texts, output schema, model and logic version.

    Editing a prompt (or anything it includes) changes the hash, so the stage reruns and old
    journal rows are not reused.
    """
    templates = {}
    for role, name in sorted(stage.template_names(config).items()):
        templates[role] = template_sources(name)
    payload = {
        "stage": stage.name,
        "logic": LOGIC_VERSION,
        "settings": hashed_settings(config),
        "templates": templates,
        "output_schema": stage.output_model.model_json_schema(),
        "response_schemas": [m.model_json_schema() for m in stage.response_models],
        "arrow_schema": str(arrow_schema(stage.output_model)),
        "model": model,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
