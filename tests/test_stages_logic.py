"""Stage logic without a server: taxonomy, configs, sampling plans, hashing, parsers, pages."""

from __future__ import annotations

import collections
import json
import shutil

import pymupdf
import pytest
from pydantic import BaseModel, ValidationError

from conftest import require
from helpers.stage_inputs import build_seed, page_row, real_pdfs
from longdoc_sdg import taxonomy
from longdoc_sdg.engine.schema import parse_reply
from longdoc_sdg.pages import PageStore
from longdoc_sdg.registry import model_stages
from longdoc_sdg.stages import get_stage, stage_config, stage_config_hash
from longdoc_sdg.stages.base import PROMPTS_DIR, select_records
from longdoc_sdg.stages.classify import PageClassification, classification_dict
from longdoc_sdg.stages.ocr import pdf_text_columns
from longdoc_sdg.stages.replies import ParseError, parse_tagged


@pytest.fixture(scope="module")
def pdfs():
    found = real_pdfs()
    require(len(found) >= 2, "no real PDFs in resources/sample_pdfs or tests/data/real_pdfs")
    return found[:2]


@pytest.fixture(scope="module")
def seed(tmp_path_factory, pdfs):
    return build_seed(tmp_path_factory.mktemp("seed"), pdfs, max_pages=3)


# ---------------------------------------------------------------------------------- taxonomy


def test_taxonomy_has_8_categories_and_45_unique_subcategories():
    assert len(taxonomy.Category) == 8
    names = [n for subs in taxonomy.SUBCATEGORIES.values() for n in subs]
    assert len(names) == 45 == len(set(names)) == len(taxonomy.Subcategory)
    assert len(taxonomy.ReasoningSubcategory) + len(taxonomy.NoneSubcategory) == 45


def test_default_weights_follow_the_reference():
    w = taxonomy.DEFAULT_WEIGHTS
    assert list(w["single_page_qa"].values()) == [0.025, 0.025, 1, 2, 2, 2, 2, 2, 0.2]
    assert list(w["windowed_qa"].values()) == [0.025, 0.025, 2, 2, 2, 2, 2, 2, 0.2]
    assert sum(w["whole_document_qa"].values()) == pytest.approx(1.0, abs=0.002)
    assert w["visual_qa"] == {"multiple_choice": 0.05, "yes_no": 0.1, "short": 2.0, "not_answerable": 0.01}
    assert set(w["text_qa"].values()) == {1.0}


def test_weighted_quality_score():
    best = {item.key: 5 for item in taxonomy.JUDGE_RUBRIC}
    assert taxonomy.weighted_quality_score(best) == 1.0
    assert sum(item.weight for item in taxonomy.JUDGE_RUBRIC) == pytest.approx(1.0)
    scores = {
        "answer_correctness": 4,
        "training_signal_strength": 3,
        "question_quality": 5,
        "visual_grounding": 2,
        "format_compliance": 5,
    }
    # (4*.35 + 3*.30 + 5*.15 + 2*.10 + 5*.10) / 5 = 3.75 / 5
    assert taxonomy.weighted_quality_score(scores) == 0.75


# ---------------------------------------------------------------------------------- sampling


def test_question_type_sampling_is_deterministic_and_follows_the_weights():
    weights = taxonomy.DEFAULT_WEIGHTS["single_page_qa"]
    ids = [f"single_page_qa:doc{i}:p0001:q0" for i in range(20000)]
    first = [taxonomy.sample_weighted(weights, i, 7) for i in ids]
    assert first == [taxonomy.sample_weighted(weights, i, 7) for i in ids]
    assert first != [taxonomy.sample_weighted(weights, i, 8) for i in ids]
    counts = collections.Counter(first)
    total = sum(weights.values())
    for key, weight in weights.items():
        expected = len(ids) * weight / total
        assert abs(counts[key] - expected) < 5 * expected**0.5 + 5, (key, counts[key], expected)


def test_zero_weight_types_are_never_sampled():
    weights = {"a": 0.0, "b": 1.0}
    assert {taxonomy.sample_weighted(weights, str(i), 0) for i in range(500)} == {"b"}


def test_select_records_spread_n_and_shuffled_n():
    keys = [f"k{i}" for i in range(100)]
    assert select_records(iter(keys), None, 0, False) is None
    spread = select_records(iter(keys), 5, 0, False)
    assert len(spread) == 5 and spread <= set(keys) and spread != set(keys[:5])
    assert spread == select_records(iter(keys), 5, 0, False) != select_records(iter(keys), 5, 1, False)
    assert select_records(iter(keys), 500, 0, False) == set(keys)
    pick10 = select_records(iter(keys), 10, 3, True)
    assert len(pick10) == 10 and pick10 != set(keys[:10])
    assert pick10 == select_records(iter(reversed(keys)), 10, 3, True)  # order-independent
    assert pick10 <= select_records(iter(keys), 20, 3, True)  # growing N keeps earlier picks
    assert select_records(iter(keys), 10, 4, True) != pick10


def test_question_type_plan_is_reproducible(seed):
    stage = get_stage("single_page_qa")
    cfg = stage_config("single_page_qa", {"num_records": 4, "seed": 11, "questions_per_record": 2})
    inputs = {"pages": seed["pages"]}

    def plan_of(c):
        return [(t.row_id, t.data["question_type"]) for t in stage.plan(c, inputs).tasks()]

    first = plan_of(cfg)
    assert len(first) == 8 and first == plan_of(cfg)
    assert stage.plan(cfg, inputs).expected_ids == [r for r, _ in first]
    other = plan_of(stage_config("single_page_qa", {"num_records": 4, "seed": 12, "questions_per_record": 2}))
    assert other != first


# ---------------------------------------------------------------------------------- configs


def _walk_fields(model: type[BaseModel], where: str):
    for name, info in model.model_fields.items():
        yield f"{where}.{name}", info
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _walk_fields(info.annotation, f"{where}.{name}")


@pytest.mark.parametrize("name", model_stages())
def test_stage_configs_document_every_field_and_refuse_unknown_keys(name):
    stage = get_stage(name)
    for where, info in _walk_fields(stage.config_model, name):
        assert info.description, f"{where} has no description"
        assert not info.is_required(), f"{where} has no default"
    with pytest.raises(ValidationError):
        stage_config(name, {"no_such_setting": 1})
    assert stage.output_model.model_config.get("extra") == "forbid"
    stage_config(name, {})  # defaults alone are valid


def test_nested_settings_merge_into_stage_defaults():
    cfg = stage_config("ocr", {"engine": "nemotron-parse", "sampling": {"top_k": 3}})
    assert cfg.sampling.temperature == 0.0 and cfg.sampling.repetition_penalty == 1.1
    assert cfg.sampling.top_k == 3 and cfg.sampling.extra_body == {"skip_special_tokens": False}
    cfg = stage_config("windowed_qa", {"question_type_weights": {"layout": 0}})
    assert cfg.question_type_weights["layout"] == 0 and cfg.question_type_weights["list"] == 2


def test_anchored_sampling_defaults_follow_the_reference():
    for name in ("single_page_qa", "windowed_qa", "whole_document_qa"):
        sampling = stage_config(name, {}).sampling.to_request()
        assert sampling == {"temperature": 1.0, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "presence_penalty": 1.5}


def test_bad_weights_are_refused():
    with pytest.raises(ValidationError, match="unknown question types"):
        stage_config("single_page_qa", {"question_type_weights": {"essay": 1}})
    with pytest.raises(ValidationError, match="positive weight"):
        stage_config("text_qa", {"question_type_weights": dict.fromkeys(taxonomy.DEFAULT_WEIGHTS["text_qa"], 0)})


# ---------------------------------------------------------------------------------- hashing


def test_editing_a_template_or_its_partial_changes_the_config_hash(tmp_path):
    for name in ("single_page_qa.j2", "_anchored_rules.j2"):
        shutil.copy(PROMPTS_DIR / name, tmp_path / name)
    own = str(tmp_path / "single_page_qa.j2")
    base = stage_config_hash("single_page_qa", {"prompt_template": own}, "m")
    assert base == stage_config_hash("single_page_qa", {"prompt_template": own}, "m")

    (tmp_path / "single_page_qa.j2").write_text((tmp_path / "single_page_qa.j2").read_text() + "\nBe brief.\n")
    edited = stage_config_hash("single_page_qa", {"prompt_template": own}, "m")
    assert edited != base
    (tmp_path / "_anchored_rules.j2").write_text((tmp_path / "_anchored_rules.j2").read_text() + "\nMore.\n")
    assert stage_config_hash("single_page_qa", {"prompt_template": own}, "m") != edited


def test_hash_follows_settings_and_model_but_not_transport():
    h = stage_config_hash("judge", {}, "judge-model")
    assert h != stage_config_hash("judge", {"sampling": {"temperature": 0.5}}, "judge-model")
    assert h != stage_config_hash("judge", {}, "other-model")
    assert h == stage_config_hash("judge", {"image_transport": {"mode": "file", "media_dir": "/x"}}, "judge-model")


def test_unknown_template_names_are_refused():
    with pytest.raises(FileNotFoundError, match="known"):
        stage_config_hash("judge", {"prompt_template": "nope.j2"})


# ---------------------------------------------------------------------------------- replies


def test_classification_enforces_none_exclusivity():
    def reply(**fields):
        base = {
            "primary_categories": ["TABULAR"],
            "subcategories": ["pivot_table"],
            "contains_reasoning_content": True,
            "reasoning_complexity_score": 4,
            "justification": "A table.",
        }
        return json.dumps({**base, **fields})

    ok = classification_dict(parse_reply(PageClassification, reply()))
    assert ok["primary_categories"] == ["TABULAR"] and ok["contains_reasoning_content"] is True
    none = classification_dict(
        parse_reply(
            PageClassification,
            reply(primary_categories=["NONE"], subcategories=["plain_text"], contains_reasoning_content=False),
        )
    )
    assert none["contains_reasoning_content"] is False
    deduped = classification_dict(parse_reply(PageClassification, reply(primary_categories=["TABULAR", "TABULAR"])))
    assert deduped["primary_categories"] == ["TABULAR"]
    bad = [
        reply(primary_categories=["NONE", "TABULAR"]),  # NONE with another category
        reply(primary_categories=["NONE"], subcategories=[], contains_reasoning_content=True),  # flag contradicts
        reply(contains_reasoning_content=False),  # reasoning categories with the flag off
        reply(primary_categories=["TABULAR", "QUANTITATIVE", "SCHEMATIC", "HIERARCHICAL"]),  # more than 3
        reply(primary_categories=[]),
        reply(reasoning_complexity_score=11),
        reply(subcategories=["photograph"]),  # a NONE subcategory on a reasoning page
    ]
    for content in bad:
        with pytest.raises(Exception) as info:
            parse_reply(PageClassification, content)
        assert getattr(info.value, "reason", None) == "schema_invalid", content


def test_tagged_reply_parser():
    good = (
        "Let me restate the layout: <question>...</question>\n"
        "<question>\nWhich region grew most?\nA. North\nB. South\n</question>\n"
        "<answer> B. South </answer>\n<evidence_pages>[3, 5, 3]</evidence_pages>\n<quality_score>2</quality_score>"
    )
    item = parse_tagged(good)
    assert item == {
        "question": "Which region grew most?\nA. North\nB. South",
        "answer": "B. South",
        "evidence_pages": [3, 5],
        "quality_score": 2,
    }
    assert (
        parse_tagged("<question>Q?</question><answer>Answer: 4</answer><quality_score>1/2</quality_score>")["answer"]
        == "4"
    )
    for bad in (
        "",
        "no tags at all",
        "<question>Q?</question><quality_score>1</quality_score>",
        "<question>Q?</question><answer>1</answer>",
        "<question>Q?</question><answer>1</answer><quality_score>3</quality_score>",
    ):
        with pytest.raises(ParseError):
            parse_tagged(bad)


# ---------------------------------------------------------------------------------- pages / OCR


def test_pdf_text_ocr_on_a_real_page_has_text_and_boxes_inside_the_page(pdfs):
    with pymupdf.open(pdfs[0]) as doc:
        row = page_row("d", doc[0], 1)
        words = {w[4] for w in doc[0].get_text("words")}
    columns = pdf_text_columns(row["pdf_text"], row["text_blocks"])
    meta = json.loads(columns["transcribed_texts__metadata"])
    assert columns["transcribed_texts"].strip() and meta and columns["num_elements"] == len(meta)
    for element in meta:
        box = element["bbox"]
        assert 0 <= box["x1"] <= box["x2"] <= 1 and 0 <= box["y1"] <= box["y2"] <= 1
        assert element["class_label"] == "Text"
    found = set(columns["transcribed_texts"].split())
    assert len(found & words) >= 0.8 * len(words)


def test_pdf_text_without_blocks_falls_back_to_the_text_layer():
    columns = pdf_text_columns("Some text", "[]")
    assert columns["transcribed_texts"] == "Some text"
    assert json.loads(columns["transcribed_texts__metadata"]) == [{"bbox": None, "class_label": "Text"}]
    assert pdf_text_columns(None, None)["transcribed_texts"] == ""


def test_page_store_reads_each_document_once_when_walked_in_order(seed):
    store = PageStore(seed["pages"])
    docs = store.doc_ids()
    assert len(docs) == 2
    for doc in docs:
        for page in (1, 2, 3):
            record = store.get_page(doc, page)
            assert record.png.startswith(b"\x89PNG") and record.page_number == page
    assert store.row_group_reads == 2
    assert [r.page_number for r in store.get_pages(docs[1], [3, 1])] == [3, 1]
    with pytest.raises(KeyError, match="pages \\[99\\]"):
        store.get_pages(docs[1], [99])
    with pytest.raises(KeyError):
        store.get_pages("missing-doc", [1])


def test_page_images_send_the_same_bytes_as_eager_parts_without_holding_pages(seed, tmp_path):
    from longdoc_sdg.engine.images import LazyImage, image_part
    from longdoc_sdg.engine.transport import dumps, encode_body
    from longdoc_sdg.stages.base import StageContext, StageFailure

    store = PageStore(seed["pages"])
    first, second = store.doc_ids()
    ctx = StageContext(
        config=stage_config("whole_document_qa", {}),
        templates={},
        page_store=store,
        output_path=str(tmp_path / "out.parquet"),
        model="m",
    )
    parts = ctx.page_images(first, [2, 1], labelled=True)
    assert all(isinstance(p["image_url"]["url"], LazyImage) for p in parts if p["type"] == "image_url")
    eager = []
    for record in store.get_pages(first, [2, 1]):
        eager += [{"type": "text", "text": f"Page {record.page_number}:"}, image_part(record.png)]
    store.get_page(second, 1)  # another document cached since: building reads the first again
    assert bytes(encode_body({"content": parts}).build()) == dumps({"content": eager})
    assert ctx.image_parts(store.get_pages(second, [3]))[0]["image_url"]["url"].size == len(
        store.get_page(second, 3).png
    )
    with pytest.raises(StageFailure, match="pages \\[99\\]"):
        ctx.page_images(first, [1, 99])
