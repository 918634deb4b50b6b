"""The workflow config: pydantic models are the single source of truth; the JSON schema in
`workflow/schemas/config.schema.yaml` is generated from them (`longdoc-sdg schema`) and is what
the workflow validates against at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalSource(Section):
    path: str = Field("resources/sample_pdfs", description="Folder searched recursively for PDFs.")
    suffix: str = Field(".pdf", description="File-name ending (case-insensitive) of the documents to take.")


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


class SourceConfig(Section):
    kind: Literal["local", "urls", "finepdfs"] = Field(
        "local", description="Where documents come from: a local folder, a URL list, or FinePDFs."
    )
    local: LocalSource = Field(LocalSource(), description="Settings of source kind 'local'.")
    urls: UrlSource = Field(UrlSource(), description="Settings of source kind 'urls'.")
    finepdfs: FinePdfsSource = Field(FinePdfsSource(), description="Settings of source kind 'finepdfs'.")
    max_documents: int | None = Field(None, ge=1, description="Take at most this many documents (null: all).")


class ShardingConfig(Section):
    documents_per_shard: int = Field(
        25,
        ge=1,
        description="Documents per shard. New documents always go to new shards, so changing this "
        "only affects shards created afterwards.",
    )


class ServingConfig(Section):
    enabled: bool = Field(
        False,
        description="Start model servers for stages without a manual endpoint, from their deployment.",
    )
    launcher: Literal["local", "slurm"] = Field(
        "local", description="Start servers as local processes or as Slurm GPU jobs (sbatch)."
    )
    deployments_dir: str = Field("config/deployments", description="Folder of deployment YAML files (NAME.yaml).")
    overrides: dict[str, dict[str, Any]] = Field(
        {},
        description="Per-deployment field overrides, e.g. {tiny-cpu-vlm: {model: /path/to/model}}.",
    )


def load_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _format_error(error) -> str:
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message
    if error.validator == "enum":
        message = f"{error.instance!r} is not allowed; choose one of {error.validator_value}"
    elif error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        message = f"{message}; allowed keys here: {allowed}"
    return f"  {key}: {message}"


def check_config(config: dict, schema_path: str | Path) -> None:
    """Validate `config` against the JSON schema, filling defaults; raise one clear error listing
    every bad key, what is wrong with it and what is allowed."""
    import jsonschema
    from snakemake.utils import validate

    schema = load_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(_format_error(e) for e in errors)
        raise ValueError(
            f"Invalid configuration (checked against {schema_path}):\n{lines}\n"
            "Fix these keys in your config file or --configfile override (see config/README.md)."
        )
    validate(config, str(schema_path), set_default=True)
