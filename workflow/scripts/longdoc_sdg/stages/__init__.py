"""`run_stage`: one model stage (declared in longdoc_sdg.registry) over one shard.

Usage (Snakemake scripts, the CLI and tests all come through here):

    run_stage("single_page_qa", {"pages": ".../pages.parquet"}, ".../single_page_qa/00000.parquet",
              params={...}, endpoint={"base_url": ..., "model": ..., "api_key_env": ...},
              threads=1, journal_path=".../.journal/single_page_qa/00000.jsonl")
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..io import get_logger
from ..registry import handler_stages, load_handler
from .base import Plan, RowCalls, RowTask, Stage, StageContext, arrow_schema, config_hash, load_template
from .ocr import PDF_TEXT_MODEL

log = get_logger("stages")


def get_stage(name: str) -> Stage:
    """The row handler of a model stage (see longdoc_sdg.registry)."""
    if name not in handler_stages():
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(handler_stages())}")
    return load_handler(name)


def stage_config(name: str, params: dict | None):
    """Validate a stage's params with its pydantic config (defaults filled, unknown keys refused)."""
    return get_stage(name).config_model.model_validate(params or {})


class EndpointSettings(BaseModel):
    """The `endpoint` dict of run_stage: where to send requests and how hard to push."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://host:8000/v1.")
    model: str = Field(description="Served model name.")
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the API key.")
    api_key: SecretStr | None = Field(None, description="The key itself (prefer api_key_env).")
    request_timeout_s: float = Field(600.0, gt=0, description="Whole-request timeout.")
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP connect timeout.")
    concurrency: dict[str, Any] = Field({}, description="engine ConcurrencyConfig fields (min, max, initial, ...).")
    retry: dict[str, Any] = Field({}, description="engine RetryConfig fields.")
    breaker: dict[str, Any] = Field(
        {}, description="engine BreakerConfig fields (window, min_requests, max_error_rate)."
    )
    error_budget: dict[str, Any] = Field({}, description="Alias of breaker.")
    runtime: str | None = Field(
        None,
        description="Runtime file of a served deployment: its ready replicas are re-read from it and "
        "requests spread over them.",
    )
    context: dict[str, Any] = Field(
        {},
        description="What the deployment says about the model's context: max_model_len, model (path or "
        "handle, for its image-token family), mm_processor_kwargs (see deployment_context).",
    )


def make_engine(endpoint: dict):
    from ..endpoints import read_api_key
    from ..engine import BreakerConfig, ChatEngine, ConcurrencyConfig, EndpointConfig, RetryConfig

    settings = EndpointSettings.model_validate(endpoint)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if settings.api_key_env:
        key = read_api_key(settings.api_key_env, f"endpoint {settings.base_url} (model {settings.model})")
    config = EndpointConfig(
        base_url=settings.base_url,
        model=settings.model,
        api_key=key,
        request_timeout_s=settings.request_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
    )
    replicas = None
    if settings.runtime:
        from ..serve import read_replicas

        replicas = functools.partial(read_replicas, settings.runtime)
    return ChatEngine(
        config,
        replicas=replicas,
        concurrency=ConcurrencyConfig(**settings.concurrency),
        retry=RetryConfig(**settings.retry),
        breaker=BreakerConfig(**{**settings.error_budget, **settings.breaker}),
    )


def _check_inputs(stage: Stage, inputs: dict[str, str]) -> None:
    missing = [k for k in stage.input_keys if k not in inputs]
    extra = [k for k in inputs if k not in stage.input_keys]
    if missing or extra:
        raise ValueError(
            f"stage {stage.name} takes inputs {list(stage.input_keys)}; missing {missing}, unexpected {extra}"
        )
    for key, path in inputs.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"stage {stage.name}: input {key} = {path} does not exist")


def stage_needs_endpoint(stage: str, params: dict | None, inputs: dict[str, str]) -> bool:
    """Whether one job of the stage (its settings, its shard's inputs) needs the model."""
    spec = get_stage(stage)
    return spec.needs_endpoint_for(spec.config_model.model_validate(params or {}), inputs)


def run_stage(
    stage: str,
    inputs: dict[str, str],
    output: str,
    params: dict | None,
    endpoint: dict | None,
    threads: int,
    journal_path: str,
) -> dict:
    """Run one stage over one shard; returns the shard summary (rows, ok, failed, reasons, tokens).

    Row accounting: output rows (ok + failed) = input rows after the stage's filter, no duplicates.
    A per-row problem is a failed row with its reason; an endpoint problem fails the job.
    """
    from ..engine import INFRA_REASONS, ShardWriter, run_rows
    from ..engine.budget import budget_for_endpoint
    from ..pages import PageStore

    spec = get_stage(stage)
    config = spec.config_model.model_validate(params or {})
    _check_inputs(spec, inputs)
    uses_model = spec.needs_endpoint_for(config, inputs)
    if uses_model and not endpoint:
        raise ValueError(f"stage {stage} needs an endpoint (base_url, model) for this config")
    model_name = (endpoint or {}).get("model") if uses_model else PDF_TEXT_MODEL

    templates = {role: load_template(name) for role, name in spec.template_names(config).items()}
    digest = config_hash(spec, config, model_name)
    plan: Plan = spec.plan(config, inputs)
    writer = ShardWriter(output, journal_path, digest, arrow_schema(spec.output_model))
    writer.redo(INFRA_REASONS)
    pending = len(set(plan.expected_ids) - writer.done_ids())
    log.info("%s: %d rows planned, %d left to do (config %s)", stage, len(plan.expected_ids), pending, digest)

    page_store = None
    if spec.pages_key and spec.pages_key in inputs and uses_model:
        page_store = PageStore(inputs[spec.pages_key])
    ctx = StageContext(
        config=config, templates=templates, page_store=page_store, output_path=output, model=model_name or ""
    )
    budget = None  # set once the endpoint's /v1/models card is read

    def validated(task: RowTask, columns: dict) -> dict:
        # Our own output must fit the closed schema: a mismatch is a bug and fails the job.
        return spec.output_model.model_validate(columns).model_dump()

    async def process_model(row: dict, engine) -> dict:
        task: RowTask = row["task"]
        columns = await spec.process(task, ctx, RowCalls(engine, budget))
        # A row answered without the model (OCR 'auto' on a page with a text layer) says so.
        model = columns.pop("model", None)
        out = validated(task, columns)
        return out if model is None else {**out, "model": model}

    async def process_local(row: dict, engine) -> dict:
        task: RowTask = row["task"]
        return {**validated(task, spec.process_sync(task, ctx)), "model": PDF_TEXT_MODEL}

    def rows():
        for task in plan.tasks():
            yield {"row_id": task.row_id, "doc_id": task.doc_id, "pages": task.pages, "task": task}

    async def main() -> None:
        nonlocal budget
        engine = None
        try:
            if uses_model and pending:
                # Only talk to the endpoint when there is work: an empty or finished shard
                # must not fail because the server is gone.
                engine = make_engine(endpoint)
                card = await engine.verify()
                budget = budget_for_endpoint(
                    card,
                    EndpointSettings.model_validate(endpoint).context,
                    engine.endpoint.model,
                    getattr(config, "min_image_pixels", 0),
                )
            summary = await run_rows(
                rows(),
                process_model if uses_model else process_local,
                writer,
                engine,
                desc=stage,
                total=len(plan.expected_ids),
            )
            if summary.expected_ids != plan.expected_ids:
                raise RuntimeError(f"{stage}: the plan's rows changed while streaming (a bug)")
        finally:
            if engine is not None:
                await engine.aclose()

    try:
        asyncio.run(main())
        check_not_all_failed(stage, writer.outcomes())
        return writer.finalize(plan.expected_ids)
    finally:
        writer.close()


# Fewer rows than this all failing alike can be chance (one long page, one odd reply).
ALL_FAILED_MIN_ROWS = 4


def check_not_all_failed(stage: str, outcomes) -> None:
    """Fail the job (the journal keeps its rows) when every row failed with one reason a
    setting causes, naming the setting, rather than end with a shard of failures and rc 0."""
    from ..engine.errors import SETTING_REASONS, AllRowsFailed

    total = sum(outcomes.values())
    if total < ALL_FAILED_MIN_ROWS or len(outcomes) != 1:
        return
    (reason,) = outcomes
    if reason in SETTING_REASONS:
        advice = SETTING_REASONS[reason].format(stage=stage)
        raise AllRowsFailed(f"{stage}: all {total} rows of the shard failed with {reason}: {advice}")


def stage_config_hash(stage: str, params: dict | None, model: str | None = None) -> str:
    """The hash a shard's journal is keyed by: settings + prompt texts + schema + model."""
    spec = get_stage(stage)
    return config_hash(spec, spec.config_model.model_validate(params or {}), model)


__all__ = [
    "EndpointSettings",
    "check_not_all_failed",
    "get_stage",
    "make_engine",
    "run_stage",
    "stage_config",
    "stage_config_hash",
    "stage_needs_endpoint",
]
