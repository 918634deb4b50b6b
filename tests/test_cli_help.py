"""`longdoc-sdg stage NAME --help` names the keys as the workflow config does, and shows every
default in full."""

from __future__ import annotations

import json
import re

from longdoc_sdg.cli import stage_help
from longdoc_sdg.config import default_config
from longdoc_sdg.stages import get_stage


def help_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-z_][a-z0-9_.]*)\s{2,}", text, re.M)}


def test_endpoint_keys_match_the_workflow_config():
    text = stage_help("single_page_qa")
    names = help_names(text)
    config = default_config()
    run = config["stages"]["single_page_qa"]["run"]
    for key in ("concurrency", "retry", "error_budget"):
        for field in run[key]:
            assert f"{key}.{field}" in names, f"{key}.{field} missing from the help"
    assert "request_timeout_s" in names
    for field in config["models"]["judge"]["endpoint"]:
        assert field in names, f"endpoint {field} missing from the help"
    assert "models.ALIAS.endpoint.*" in text and "stages.single_page_qa.run.*" in text
    assert "breaker" not in text  # the workflow config calls it error_budget


def test_long_defaults_are_shown_whole():
    stage = get_stage("single_page_qa")
    default = json.dumps(stage.config_model().question_type_weights)
    assert len(default) > 40
    text = stage_help("single_page_qa")
    start = text.index("question_type_weights")
    block = text[start : text.index("\nmin_evidence_pages", start)]
    # The default column wraps over several lines; joined again it is the whole value.
    column = block.splitlines()[0].index(default[:10])
    pieces = [line[column : column + 40].strip() for line in block.splitlines()]
    assert " ".join(p for p in pieces if p) == default
