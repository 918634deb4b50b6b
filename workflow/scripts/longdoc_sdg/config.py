"""The workflow config: pydantic models are the single source of truth; the JSON schema in
`workflow/schemas/config.schema.yaml` is generated from them
(`python3 -m longdoc_sdg.config --write-schema`) and is what the workflow validates against at start.

One rule for every section: keys under `settings:` change results (they reach their rules
through `params:`, so a change reruns what they affect); keys under `run:` only steer a run
(read by the job at job time, never a rerun trigger). The few keys beside them choose what runs
(`enabled`, a stage's `model`, export `stages`/`layouts`). Models are named once under
`models:` and stages refer to them by alias."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .registry import qa_stages


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalSource(Section):
    path: str = Field("resources/sample_pdfs", description="Folder searched recursively for PDFs.")
    suffix: str = Field(".pdf", description="File-name ending (case-insensitive) of the documents to take.")
    symlinks: Literal["inside", "follow", "refuse"] = Field(
        "inside",
        description="Symbolic links to files: 'inside' reads those whose target stays in the folder, 'follow' "
        "reads any, 'refuse' none. Refused entries, link loops and broken links become `refused_entry` failure "
        "rows; linked folders are never entered.",
    )


class UrlSource(Section):
    path: str | None = Field(None, description="Text file with one http(s) URL per line; '#' starts a comment.")


class FinePdfsSource(Section):
    dataset: str = Field(
        "HuggingFaceFW/finepdfs",
        description="Hub dataset id, or a local folder holding a copy in the same layout.",
    )
    subset: str = Field("eng_Latn", description="Language subset (the dataset's config name).")
    split: str = Field("train", description="Dataset split.")
    data_files: str = Field(
        "data/{subset}/{split}/*.parquet",
        description="Parquet files of the subset inside the dataset, with {subset} and {split} filled in.",
    )
    num_documents: int = Field(100, ge=1, description="How many rows (documents) to take from the stream.")


class SourceSettings(Section):
    kind: Literal["local", "urls", "finepdfs"] = Field(
        "local", description="Where documents come from: a local folder, a URL list, or FinePDFs."
    )
    local: LocalSource = Field(LocalSource(), description="Settings of source kind 'local'.")
    urls: UrlSource = Field(UrlSource(), description="Settings of source kind 'urls'.")
    finepdfs: FinePdfsSource = Field(FinePdfsSource(), description="Settings of source kind 'finepdfs'.")
    max_documents: int | None = Field(None, ge=1, description="Take at most this many documents (null: all).")


class SourceConfig(Section):
    settings: SourceSettings = Field(SourceSettings(), description="Which documents make the run.")


class ShardingSettings(Section):
    documents_per_shard: int = Field(
        25,
        ge=1,
        description="Documents per shard. Fixed once a results_dir has a manifest: changing it later is an "
        "error (new documents always go to new shards; use a new results_dir to shard differently).",
    )


class ShardingConfig(Section):
    settings: ShardingSettings = Field(ShardingSettings(), description="How documents are grouped into shards.")


class ServingRun(Section):
    launcher: Literal["auto", "local", "slurm"] = Field(
        "auto",
        description="Start servers as local processes or as Slurm GPU jobs (sbatch to the deployment's "
        "partition); auto = slurm under profiles/slurm (it sets the serve rule's serve_launcher resource), "
        "else local.",
    )
    deployments_dir: str = Field("config/deployments", description="Folder of deployment YAML files (NAME.yaml).")
    overrides: dict[str, dict[str, Any]] = Field(
        {},
        description="Per-deployment field overrides, e.g. {tiny-cpu-vlm: {model: /path/to/model}}. What "
        "changes answers (the model) reaches the clients through the deployment's identity.",
    )


class ServingConfig(Section):
    enabled: bool = Field(
        False,
        description="Start a model server for every stage whose model alias names a deployment.",
    )
    run: ServingRun = Field(ServingRun(), description="Where and how servers start (never a rerun trigger).")


# libyaml's loader reads the generated schema ~8x faster than the pure-Python one (every run).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# What made the answers of `demo: true` (config/demo.yaml).
TEST_DOUBLE_DEMO = "a test-double model server (made-up answers, no model)"


def demo_source(demo: bool | str | None) -> str | None:
    """What made a demo run's answers (the config's `demo`), for its labels; None: not a demo."""
    if demo is True:
        return TEST_DOUBLE_DEMO
    return str(demo) if demo else None


def load_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_YAML_LOADER)


def _format_error(error) -> str:
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message
    if error.validator == "enum":
        message = f"{error.instance!r} is not allowed; choose one of {error.validator_value}"
    elif error.validator == "pattern" and key.endswith(".base_url"):
        message = f"{error.instance!r} is not an http(s) URL with a host; write e.g. {BASE_URL_EXAMPLE!r}"
    elif error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        message = f"{message}; allowed keys here: {allowed}"
    return f"  {key}: {message}"


def _filling_defaults(validator_class):
    """A validator that also fills every missing key from its schema default (then validates
    inside it), so nested sections given as {} get all their values."""
    import copy

    import jsonschema

    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def check_config(config: dict, schema_path: str | Path) -> None:
    """Validate `config` against the JSON schema, filling defaults; raise one clear error listing
    every bad key, what is wrong with it and what is allowed."""
    import jsonschema

    schema = load_yaml(schema_path)
    validator = _filling_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    lines = [_format_error(e) for e in errors]
    if not errors:
        lines = _check_models(config)
    if lines:
        text = "\n".join(lines)
        raise ValueError(
            f"Invalid configuration (checked against {schema_path}):\n{text}\n"
            "Fix these keys in your config file or --configfile override (see config/README.md)."
        )


def check_paths(config: dict) -> None:
    """Checks the schema cannot express: where results go, relative to the filesystem and the
    source folder. Raises ValueError naming the key and the fix."""
    raw = str(config.get("results_dir") or "").strip()
    if not raw:
        raise ValueError("results_dir: empty; name the folder for results, logs and manifests (e.g. results)")
    results = Path(raw).expanduser().resolve()
    if results == Path(results.anchor):
        raise ValueError(f"results_dir: {raw!r} is the filesystem root; name a folder of its own (e.g. results)")
    source = (config.get("source") or {}).get("settings") or {}
    if source.get("kind") == "local":
        folder = Path(str(source.get("local", {}).get("path", ""))).expanduser().resolve()
        if results == folder or results.is_relative_to(folder):
            raise ValueError(
                f"results_dir: {raw!r} is inside source.settings.local.path ({str(folder)!r}); the run would read its own "
                "outputs as documents. Move results_dir out of the source folder."
            )


def _check_models(config: dict) -> list[str]:
    """Fill in the built-in model aliases and check what the schema cannot: each alias names
    exactly one of deployment/endpoint, and each stage's alias exists."""
    import copy

    models = config.setdefault("models", {})
    for alias, spec in DEFAULT_MODELS.items():
        if alias not in models:
            models[alias] = copy.deepcopy({"deployment": None, "endpoint": None, **spec})
    problems = []
    for alias, spec in models.items():
        if bool(spec.get("deployment")) == (spec.get("endpoint") is not None):
            problems.append(
                f"  models.{alias}: give exactly one of deployment (e.g. {{deployment: qwen3-vl-30b}}) or endpoint "
                f"(e.g. {{endpoint: {{base_url: {BASE_URL_EXAMPLE}, model: NAME, api_key_env: MY_KEY}}}})"
            )
        endpoint = spec.get("endpoint") or {}
        if endpoint.get("base_url") and not endpoint.get("model"):
            problems.append(f"  models.{alias}.endpoint.model: required with base_url (the name /v1/models lists)")
    for stage, section in (config.get("stages") or {}).items():
        alias = section.get("model")
        if alias is not None and alias not in models:
            problems.append(f"  stages.{stage}.model: {alias!r} is not a model alias; defined: {sorted(models)}")
    return problems


# http(s), a non-empty host (name, IPv4 or [IPv6]), optional port and path.
BASE_URL_PATTERN = r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(:[0-9]+)?(/[^\s]*)?$"
BASE_URL_EXAMPLE = "http://gpu-node:8000/v1"


class Endpoint(Section):
    """The one shape of a model endpoint. The API key never goes in the config: only the name of
    the environment variable holding it."""

    base_url: str | None = Field(
        None,
        pattern=BASE_URL_PATTERN,
        description=f"OpenAI-compatible base URL of a running server, e.g. {BASE_URL_EXAMPLE} (http or https "
        "and a host; null: not configured, stages using this model are skipped).",
    )
    model: str | None = Field(None, min_length=1, description="Model name the server lists in /v1/models.")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the API key (read by the job; null: no key).",
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="Context length of the model behind this endpoint, used only when its /v1/models does not "
        "list one (vLLM does): each request's prompt + images + max_tokens is fitted into it. null: then unchecked.",
    )


class ModelSpec(Section):
    """A named model: a deployment the workflow serves, or an endpoint that already runs."""

    deployment: str | None = Field(
        None, description="Deployment (serving.run.deployments_dir/NAME.yaml) served when serving.enabled."
    )
    endpoint: Endpoint | None = Field(None, description="An already running OpenAI-compatible server.")


DEFAULT_MODELS: dict[str, dict] = {
    "nemotron-parse": {"deployment": "nemotron-parse"},
    "gpt-oss-120b": {"deployment": "gpt-oss-120b"},
    "qwen3-vl-30b": {"deployment": "qwen3-vl-30b"},
    "qwen3-vl-235b-thinking": {"deployment": "qwen3-vl-235b-thinking"},
    # A frontier model: no deployment is served for it; point its endpoint at one.
    "judge": {"endpoint": {"base_url": None, "model": None, "api_key_env": "JUDGE_API_KEY"}},
}

# Fields of a stage's own config that only steer a run: the workflow config puts them under
# `stages.NAME.run`, the job merges them back.
STAGE_RUN_FIELDS = ("image_transport",)


def _stage_section(stage_name: str):
    """A stage's config section: which model, its `settings` (the stage's own pydantic config)
    and its `run` steering (request limits, retries, error budget, image transport)."""
    from pydantic import create_model

    from .engine.config import BreakerConfig, ConcurrencyConfig, RetryConfig
    from .registry import get_spec
    from .stages import get_stage

    base = get_stage(stage_name).config_model
    settings_fields = {
        name: (info.annotation, info) for name, info in base.model_fields.items() if name not in STAGE_RUN_FIELDS
    }
    settings = create_model(f"{base.__name__}Settings", __base__=Section, **settings_fields)
    run_fields = {
        name: (base.model_fields[name].annotation, base.model_fields[name])
        for name in STAGE_RUN_FIELDS
        if name in base.model_fields
    }
    run = create_model(
        f"{base.__name__}Run",
        __base__=Section,
        request_timeout_s=(float, Field(600.0, gt=0, description="Whole-request timeout in seconds.")),
        concurrency=(
            ConcurrencyConfig,
            Field(ConcurrencyConfig(), description="Adaptive request concurrency (AIMD) limits."),
        ),
        retry=(RetryConfig, Field(RetryConfig(), description="Retries of failed requests.")),
        error_budget=(
            BreakerConfig,
            Field(
                BreakerConfig(),
                description="Infrastructure error rate over which the job fails fast (to be retried) instead of "
                "writing failure rows.",
            ),
        ),
        **run_fields,
    )
    return create_model(
        f"{base.__name__}Section",
        __base__=Section,
        enabled=(
            bool,
            Field(get_spec(stage_name).enabled_by_default, description="Run this stage when its model is reachable."),
        ),
        model=(
            str | None,
            Field(get_spec(stage_name).model, description="Alias (a key of `models:`) of the stage's model."),
        ),
        settings=(settings, Field(settings(), description="What the stage produces (rule params).")),
        run=(run, Field(run(), description="How the stage's jobs run (read at job time, never a rerun trigger).")),
    )


def _stages_model():
    from pydantic import create_model

    from .registry import get_spec, model_stages

    fields = {}
    for name in model_stages():
        section = _stage_section(name)
        spec = get_spec(name)
        fields[name] = (section, Field(section(), description=f"Stage {spec.number:02d}: {spec.summary}."))
    return create_model("StagesConfig", __base__=Section, **fields)


def workflow_config_model():
    from pydantic import create_model

    from .seed.config import SeedRun, SeedSettings

    class SeedConfig(Section):
        settings: SeedSettings = Field(SeedSettings(), description="What the seed makes (rule params).")
        run: SeedRun = Field(SeedRun(), description="How seed jobs run (read at job time, never a rerun trigger).")

    from .seed.decontaminate import DecontaminationConfig

    class DecontaminationSection(Section):
        settings: DecontaminationConfig = Field(
            DecontaminationConfig(), description="Benchmarks to keep out and how closely (rule params)."
        )

    stages = _stages_model()
    evaluate = _stage_section("evaluate")
    return create_model(
        "WorkflowConfig",
        __base__=Section,
        results_dir=(str, Field("results", description="Folder of all results, logs and manifests of a run.")),
        source=(SourceConfig, Field(SourceConfig(), description="Where the documents come from.")),
        sharding=(ShardingConfig, Field(ShardingConfig(), description="How documents are grouped into shards.")),
        seed=(SeedConfig, Field(SeedConfig(), description="Stage 01: fetching and rendering.")),
        mix=(
            MixConfig,
            Field(MixConfig(), description="Which question-type mix the QA stages aim at (see longdoc_sdg/mix.py)."),
        ),
        models=(
            dict[str, ModelSpec],
            Field(
                {alias: ModelSpec.model_validate(spec) for alias, spec in DEFAULT_MODELS.items()},
                description="Models by alias: {deployment: NAME} or {endpoint: {base_url, model, api_key_env}}. "
                f"The built-in aliases ({', '.join(DEFAULT_MODELS)}) are always defined; redefine one to point "
                "it elsewhere. Only a model's identity (endpoint model name, deployment identity) is a rerun "
                "trigger, never its host or key.",
            ),
        ),
        decontamination=(
            DecontaminationSection,
            Field(
                DecontaminationSection(),
                description="Benchmarks kept out of the data: their documents are not seeded (failure reason "
                "`contaminated`), questions overlapping theirs are dropped at export.",
            ),
        ),
        serving=(ServingConfig, Field(ServingConfig(), description="Automatic model servers (deployments).")),
        stages=(stages, Field(stages(), description="Model stages (longdoc_sdg.registry), by name.")),
        evaluate=(
            evaluate,
            Field(
                evaluate(),
                description="`snakemake evaluate` (not part of a normal run): a model (evaluate.model) answers a "
                "benchmark in MMLongBench-Doc's layout (evaluate.settings.samples, .documents), scored by its rules.",
            ),
        ),
        export=(
            ExportConfig,
            Field(ExportConfig(), description="Final datasets per QA stage and their export layouts."),
        ),
        publish=(
            PublishConfig,
            Field(PublishConfig(), description="Uploading the Hub-ready export folder to the Hugging Face Hub."),
        ),
        report=(
            ReportConfig,
            Field(ReportConfig(), description="Run statistics and the figures of `snakemake --report`."),
        ),
        summary=(
            SummaryConfig,
            Field(
                SummaryConfig(),
                description="The closing summary printed at the end of a run (and written to results_dir/summary.json).",
            ),
        ),
        demo=(
            bool | str,
            Field(
                False,
                description="Label every output (summary, report, dataset card) as demo data: true (set by "
                "config/demo.yaml) when the answers come from the test-double model server, or a text naming "
                "what made them (config/demo-vllm.yaml: a tiny random-weight model).",
            ),
        ),
    )


def _inline_refs(node, defs):
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].split("/")[-1]]
            merged = {**_inline_refs(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
            return merged
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _collapse_nullable(node):
    """`anyOf: [X, null]` -> X with type [T, null]: validation errors then point at the key inside X
    (e.g. models.NAME.endpoint.base_url) instead of "not valid under any of the given schemas"."""
    if isinstance(node, list):
        return [_collapse_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _collapse_nullable(v) for k, v in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        if isinstance(other.get("type"), str) and "anyOf" not in other:
            merged = {**other, **{k: v for k, v in node.items() if k != "anyOf"}}
            merged["type"] = [other["type"], "null"]
            if "enum" in merged:
                merged["enum"] = [*merged["enum"], None]
            return merged
    return node


def _fill_defaults(schema: dict, defaults) -> None:
    """Give every property its default. A section's default is {}: validation then fills each of
    its keys from their own defaults, so every value is stated once."""
    schema.pop("title", None)
    for key, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        if "properties" in prop:
            value = defaults.get(key) if isinstance(defaults, dict) else None
            _fill_defaults(prop, value or {})
            # A nullable section (e.g. a model's endpoint) keeps its default (null); others are {}.
            prop["default"] = {} if prop.get("type") == "object" else value
        elif isinstance(defaults, dict) and key in defaults:
            # The instance's value, not the class's: a stage may default a shared setting
            # differently (e.g. classify samples greedily).
            prop["default"] = defaults[key]


def build_schema() -> dict:
    model = workflow_config_model()
    raw = model.model_json_schema(mode="serialization")
    schema = _collapse_nullable(_inline_refs(raw, raw.get("$defs", {})))
    _fill_defaults(schema, model().model_dump(mode="json"))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "Configuration of the longdoc-sdg workflow (generated from longdoc_sdg.config; do not edit by hand)."
    )
    return schema


def default_config() -> dict:
    return workflow_config_model()().model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# Export, publish and report (longdoc_sdg.export, longdoc_sdg.report).


class MixSettings(Section):
    target: Literal["reference", "benchmark", "custom"] = Field(
        "reference",
        description="'reference': the reference recipe's question-type weights (stage weights may not be "
        "changed); 'benchmark': weights derived from MMLongBench-Doc's answer-format and evidence-source mix "
        "(visual and anchored QA); 'custom': each stage's question_type_weights as configured.",
    )


class MixConfig(Section):
    settings: MixSettings = Field(MixSettings(), description="The question-type mix (QA stage params).")


class ExportFilters(Section):
    min_judge_score: float | None = Field(
        0.6,
        ge=0,
        le=1,
        description="Keep rows whose judge weighted_quality_score (0-1) is at least this; null: no score "
        "threshold. Applies to QA stages the judge ran on (stages.judge.settings.judge_stages).",
    )
    require_judge: bool = Field(
        True,
        description="For QA stages the judge ran on, drop rows without a successful judge verdict "
        "(the judge row failed, or stages.judge.settings.num_records left the row out).",
    )
    require_format_ok: bool = Field(True, description="Drop rows whose answer failed its question type's format check.")
    min_verify_score: (
        dict[Literal["Int", "Float", "Str", "None", "List"], Annotated[float, Field(ge=0, le=1)]] | None
    ) = Field(
        {"Int": 1.0, "Float": 1.0, "None": 1.0, "Str": 0.5, "List": 0.5},
        description="Per MMLongBench-Doc answer format: keep a verified row when its verify_score (the independent "
        "answer scored against the generated one by the benchmark's fixed rules, 0-1) is at least this. 1.0 for "
        "the exactly scored formats; Str and List score by ANLS, whose cut-off is already 0.5. A format left out, "
        "or null, is not filtered; rows without a verify verdict are kept. Applies to stages.verify.settings.verify_stages.",
    )
    min_quality_score: int | None = Field(
        1,
        ge=0,
        le=2,
        description="Anchored QA (06-08): keep rows whose self-checked quality_score (0/1/2) is at least this; null: all.",
    )
    require_relevant: bool = Field(True, description="Text and visual QA (03, 05): keep rows judged 'Relevant'.")
    require_correct: bool = Field(
        True, description="Text and visual QA (03, 05): keep rows whose answer was judged 'Correct'."
    )
    require_evidence_ok: bool = Field(
        True,
        description="Anchored QA (06-08): keep rows citing at least the stage's min_evidence_pages evidence "
        "pages (a cited page outside the pages shown fails the row as `bad_evidence` when it is generated).",
    )


class ExportDedup(Section):
    enabled: bool = Field(
        True,
        description="Drop near-identical questions within a document: questions equal after Unicode "
        "normalisation, lower-casing and collapsing punctuation and white space count as one.",
    )
    keep: Literal["best", "first"] = Field(
        "best",
        description="Which duplicate stays: 'best' = highest judge score, then quality score, then row id; "
        "'first' = lowest row id.",
    )
    documents: bool = Field(
        True,
        description="Drop every row of a document whose bytes (sha256) equal those of a document seeded in an "
        "earlier shard (or, within a shard, listed before it): the same PDF under two URLs is asked twice when "
        "the copies land in different shards, and would otherwise be trained on twice and could straddle the "
        "split. Local sources are already screened across shards before seeding.",
    )


class ExportSplit(Section):
    validation_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of documents in the validation split. The split is by document (all questions of a "
        "document land in one split), decided by a hash of the doc_id, so it is stable across reruns and "
        "growing runs.",
    )
    seed: str = Field("longdoc-sdg", description="Salt of the document hash; change it for a different split.")
    min_validation_documents: int = Field(
        1,
        ge=0,
        description="When validation_fraction > 0 but the hash puts fewer documents in validation, move the "
        "train documents with the lowest hashes there (small runs still get a validation split).",
    )


class ExportCard(Section):
    pretty_name: str = Field("longdoc-sdg document QA", description="Dataset name shown on the Hub.")
    license: str = Field(
        "other",
        description="Licence id in the dataset card (e.g. odc-by, cc-by-4.0). Check the licences of the source "
        "documents (FinePDFs: ODC-By 1.0) and the terms of the models used.",
    )
    language: list[str] = Field(["en"], description="Language codes in the dataset card.")
    tags: list[str] = Field(
        ["synthetic", "document-qa", "long-document", "vision-language"], description="Tags in the dataset card."
    )
    description: str = Field(
        "Synthetic question/answer pairs grounded in PDF pages, for training vision-language models on "
        "long-document understanding (MMLongBench-Doc style).",
        description="First paragraph of the dataset card.",
    )


class ExportSettings(Section):
    filters: ExportFilters = Field(ExportFilters(), description="Which rows make the final datasets.")
    dedup: ExportDedup = Field(ExportDedup(), description="Near-duplicate question removal within a document.")
    split: ExportSplit = Field(ExportSplit(), description="Deterministic train/validation split by document.")
    card: ExportCard = Field(ExportCard(), description="Dataset card (README.md) metadata of the Hub folder.")
    max_file_mb: int = Field(
        500, ge=1, description="Start a new parquet file when the current one reaches this size (MB of page images)."
    )


class ExportConfig(Section):
    enabled: bool = Field(True, description="Build the final datasets and their layouts for every active QA stage.")
    stages: list[Literal[qa_stages()]] | None = Field(
        None, description="QA stages to export (null: every active QA stage)."
    )
    layouts: list[Literal["reference", "hub"]] = Field(
        ["reference", "hub"],
        description="'reference': the reference recipe's layout (seed columns + generated columns, page images as "
        "a png_images_base64 JSON array), one folder per stage; 'hub': a Hub-ready folder (parquet with images "
        "as image bytes + README dataset card) loadable with datasets.load_dataset.",
    )
    settings: ExportSettings = Field(ExportSettings(), description="What the final datasets hold (rule params).")


class PublishSettings(Section):
    repo_id: str | None = Field(None, description="Target dataset repository, e.g. my-org/longdoc-qa.")
    private: bool = Field(True, description="Create the repository as private (an existing one keeps its visibility).")
    dry_run: bool = Field(
        False, description="Only record (and log) what would be uploaded, without contacting the Hub."
    )
    endpoint: str | None = Field(None, description="Hub URL (null: huggingface.co or $HF_ENDPOINT).")
    revision: str | None = Field(None, description="Branch to commit to (null: the default branch).")
    commit_message: str = Field("Upload longdoc-sdg export", description="Commit message of the upload.")


class PublishRun(Section):
    token_env: str = Field(
        "HF_TOKEN",
        description="NAME of the environment variable holding the Hub token (the token never goes in config).",
    )


class PublishParams(PublishSettings, PublishRun):
    """Both halves merged: what the publish job works with."""


class PublishConfig(Section):
    enabled: bool = Field(
        False, description="Upload the Hub folder (export.layouts must include 'hub') at the end of a run."
    )
    settings: PublishSettings = Field(PublishSettings(), description="Where and what to upload (rule params).")
    run: PublishRun = Field(PublishRun(), description="How the upload authenticates (read at job time).")


class ReportSettings(Section):
    judge_score_bins: int = Field(20, ge=2, le=100, description="Bins of the judge score histograms (0-1).")


class ReportConfig(Section):
    enabled: bool = Field(
        True, description="Compute run statistics and the report figures (snakemake --report report.html)."
    )
    settings: ReportSettings = Field(ReportSettings(), description="How the figures are drawn (rule params).")


class SummaryRun(Section):
    min_ok_rows: int = Field(
        1,
        ge=0,
        description="Yield floor: the closing summary warns loudly about every stage (the seed: documents) "
        "with fewer ok rows than this; 0 turns the check off.",
    )
    fail_below_floor: bool = Field(
        False, description="Make the run fail (exit status 1, after the summary) when a stage is below min_ok_rows."
    )


class SummaryConfig(Section):
    run: SummaryRun = Field(
        SummaryRun(),
        description="The yield floor of the closing summary (read when the run ends, never a rerun trigger).",
    )


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def render_schema() -> str:
    header = "# Generated by `python -m longdoc_sdg.config --write-schema`; edit longdoc_sdg/config.py instead.\n"

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):  # shared default objects must stay separate copies
            return True

    return header + yaml.dump(build_schema(), Dumper=NoAliases, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Generate the workflow config JSON schema from the pydantic models.")
    parser.add_argument("--write-schema", action="store_true", help=f"write {SCHEMA_PATH}")
    args = parser.parse_args()
    text = render_schema()
    if args.write_schema:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(text)
