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
    assert config["seed"]["settings"]["dpi"] == 144
    assert config["stages"]["whole_document_qa"]["settings"]["max_pages"] == 50
    assert config["seed"]["run"]["download"]["concurrency"] == 8
    assert config["source"]["settings"]["kind"] == "local"
    assert config["stages"]["ocr"]["settings"]["engine"] == "pdf-text"
    assert config["stages"]["ocr"]["run"]["retry"]["max_attempts"] == 5
    assert config["stages"]["judge"]["model"] == "judge"
    assert config["models"]["judge"]["endpoint"]["base_url"] is None
    assert config["models"]["qwen3-vl-30b"] == {"deployment": "qwen3-vl-30b", "endpoint": None}


def test_every_section_splits_into_settings_and_run():
    """One rule, visible in the YAML: beside `settings:` and `run:` a section only holds the keys
    that choose what runs."""
    config = {}
    check_config(config, SCHEMA_PATH)
    chooser_keys = {"enabled", "model", "stages", "layouts"}
    names = ("source", "sharding", "seed", "decontamination", "serving", "export", "publish", "report")
    sections = {name: config[name] for name in names}
    sections.update({f"stages.{name}": section for name, section in config["stages"].items()})
    for name, section in sections.items():
        assert set(section) - chooser_keys <= {"settings", "run"}, name
        assert set(section) & {"settings", "run"}, name


def test_built_in_model_aliases_stay_when_the_config_names_its_own():
    config = {"models": {"mine": {"endpoint": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"}}}}
    check_config(config, SCHEMA_PATH)
    assert {"mine", "judge", "qwen3-vl-30b"} <= set(config["models"])
    assert config["models"]["mine"]["deployment"] is None


@pytest.mark.parametrize("base_url", ["gpu-node:8000", "file:///models/x", "http://", "ftp://host/v1", "http:///v1"])
def test_an_endpoint_without_scheme_or_host_fails_at_config_time(base_url):
    config = {"models": {"qa": {"endpoint": {"base_url": base_url, "model": "m"}}}}
    with pytest.raises(ValueError) as error:
        check_config(config, SCHEMA_PATH)
    message = str(error.value)
    assert "models.qa.endpoint.base_url" in message and "http://gpu-node:8000/v1" in message


@pytest.mark.parametrize(
    "models, stages, expected",
    [
        ({"qa": {}}, {}, ["models.qa", "exactly one of deployment"]),
        ({"qa": {"deployment": "x", "endpoint": {"base_url": None}}}, {}, ["models.qa", "exactly one"]),
        ({"qa": {"endpoint": {"base_url": "http://h:1/v1"}}}, {}, ["models.qa.endpoint.model", "required"]),
        ({}, {"classify": {"model": "nope"}}, ["stages.classify.model", "'nope' is not a model alias"]),
    ],
)
def test_model_references_are_checked_at_config_time(models, stages, expected):
    with pytest.raises(ValueError) as error:
        check_config({"models": models, "stages": stages}, SCHEMA_PATH)
    for fragment in expected:
        assert fragment in str(error.value)


def test_shipped_config_is_valid(repo_root):
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    check_config(config, SCHEMA_PATH)
    assert config["source"]["settings"]["local"]["path"] == "resources/sample_pdfs"


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"source": {"settings": {"kind": "ftp"}}},
            ["source.settings.kind", "'ftp' is not allowed", "local", "finepdfs"],
        ),
        ({"seed": {"settings": {"dpix": 100}}}, ["seed.settings:", "'dpix' was unexpected", "dpi"]),
        ({"seed": {"settings": {"dpi": -3}}}, ["seed.settings.dpi"]),
        # the layout before settings/run: the error names the keys allowed there
        ({"seed": {"dpi": 144}}, ["seed:", "'dpi' was unexpected", "run", "settings"]),
        (
            {"stages": {"ocr": {"settings": {"engine": "tesseract"}}}},
            ["stages.ocr.settings.engine", "pdf-text", "nemotron-parse"],
        ),
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
    assert config["stages"]["classify"]["settings"]["sampling"]["temperature"] == 0.0
    assert config["stages"]["single_page_qa"]["settings"]["sampling"]["temperature"] == 1.0
    assert config["stages"]["single_page_qa"]["settings"]["sampling"]["top_k"] == 20
    for stage in ("ocr", "classify", "single_page_qa", "judge"):
        from_workflow = stage_config(stage, stage_config_section(config, stage)).model_dump()
        assert from_workflow == stage_config(stage, {}).model_dump(), stage
