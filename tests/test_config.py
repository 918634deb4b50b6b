"""The config schema: generated from the pydantic models, complete, and strict with clear errors."""

import copy

import pytest
import yaml

from longdoc_sdg.config import SCHEMA_PATH, check_config, render_schema


def _walk(node, path=()):
    for key, prop in node.get("properties", {}).items():
        yield path + (key,), prop
        yield from _walk(prop, path + (key,))


def test_committed_schema_is_generated_from_the_models():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), (
        "workflow/schemas/config.schema.yaml is stale: run python -m longdoc_sdg.config --write-schema"
    )


def test_every_key_has_a_description_and_a_default():
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    missing = [".".join(p) for p, prop in _walk(schema) if "description" not in prop or "default" not in prop]
    assert missing == []


def test_defaults_fill_an_empty_config(repo_root):
    config = {}
    check_config(config, SCHEMA_PATH)
    assert config["seed"]["dpi"] == 144
    assert config["stages"]["whole_document_qa"]["max_pages"] == 50
    assert config["source"]["kind"] == "local"
    assert config["stages"]["ocr"]["engine"] == "pdf-text"
    assert config["stages"]["judge"]["endpoint"]["base_url"] is None


def test_shipped_config_is_valid(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    check_config(config, SCHEMA_PATH)
    assert config["source"]["local"]["path"] == "resources/sample_pdfs"


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"source": {"kind": "ftp"}}, ["source.kind", "'ftp' is not allowed", "local", "finepdfs"]),
        ({"seed": {"dpix": 100}}, ["seed:", "'dpix' was unexpected", "dpi"]),
        ({"seed": {"dpi": -3}}, ["seed.dpi"]),
        ({"stages": {"ocr": {"engine": "tesseract"}}}, ["stages.ocr.engine", "pdf-text", "nemotron-parse"]),
    ],
)
def test_bad_keys_are_named_with_the_allowed_values(patch, expected):
    config = copy.deepcopy(patch)
    with pytest.raises(ValueError) as error:
        check_config(config, SCHEMA_PATH)
    for fragment in expected:
        assert fragment in str(error.value)


def test_stage_specific_defaults_survive_default_filling():
    """A shared setting keeps each stage's own default (classify greedy, 06 sampled at 1.0)."""
    from longdoc_sdg.plan import stage_config_section
    from longdoc_sdg.stages import stage_config

    config = {}
    check_config(config, SCHEMA_PATH)
    assert config["stages"]["classify"]["sampling"]["temperature"] == 0.0
    assert config["stages"]["single_page_qa"]["sampling"]["temperature"] == 1.0
    assert config["stages"]["single_page_qa"]["sampling"]["top_k"] == 20
    for stage in ("ocr", "classify", "single_page_qa", "judge"):
        from_workflow = stage_config(stage, stage_config_section(config, stage)).model_dump()
        assert from_workflow == stage_config(stage, {}).model_dump(), stage
