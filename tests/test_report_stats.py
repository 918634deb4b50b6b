"""Run statistics and figures on a synthetic results folder: the numbers equal direct DuckDB queries
over the shards, every table is written, and every figure is drawn (with or without data)."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers.export_run import SyntheticRun
from longdoc_sdg.export.dataset import build_dataset
from longdoc_sdg.registry import get_spec, model_stages, qa_stages
from longdoc_sdg.report.figures import FIGURES, draw_figures, summary_html
from longdoc_sdg.report.stats import STATS_TABLES, compute_stats, write_stats

QA_STAGES = qa_stages()
# Stages with one output per shard (judge and verify: one per QA stage and shard).
MODEL_STAGES = tuple(s for s in model_stages() if not get_spec(s).per_qa_stage)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = SyntheticRun(tmp_path_factory.mktemp("synthetic"))
    out = run.results / "export" / "datasets"
    for stage in QA_STAGES:
        build_dataset(
            stage,
            run.dataset_inputs(stage),
            str(out / f"{stage}.parquet"),
            str(out / f"{stage}.summary.json"),
            {"filters": {"min_judge_score": 0.6}},
        )
    return run


def stats_inputs(run: SyntheticRun) -> dict:
    out = run.results / "export" / "datasets"
    inputs = {
        "manifest": [str(run.results / "manifest" / f"{s}.parquet") for s in run.shards],
        "documents": run.seed_files("documents"),
        "failures": run.seed_files("failures"),
        "pages": run.seed_files("pages"),
        "judge": [f for s in QA_STAGES for f in run.files(f"judge/{s}")],
        "export_datasets": [str(out / f"{s}.parquet") for s in QA_STAGES],
        "export_summaries": [str(out / f"{s}.summary.json") for s in QA_STAGES],
    }
    inputs.update({s: run.files(s) for s in MODEL_STAGES})
    return inputs


@pytest.fixture(scope="module")
def stats(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stats")
    tables = {name: str(folder / "stats" / f"{name}.parquet") for name in STATS_TABLES}
    result = write_stats(stats_inputs(run), str(folder / "stats.json"), tables, {"judge_score_bins": 10})
    return {"folder": folder, "tables": tables, "stats": result}


def q(sql: str):
    return duckdb.execute(sql).fetchall()


def files(run, stage):
    return "[" + ", ".join(f"'{f}'" for f in run.files(stage)) + "]"


def test_yield_matches_duckdb_over_the_shards(run, stats):
    by_stage = {r["stage"]: r for r in stats["stats"]["tables"]["stage_yield"]}
    for stage in MODEL_STAGES + tuple(f"judge/{s}" for s in QA_STAGES):
        rows, ok, failed = q(
            f"SELECT count(*), count(*) FILTER (WHERE status = 'ok'), "
            f"count(*) FILTER (WHERE status = 'failed') FROM read_parquet({files(run, stage)})"
        )[0]
        assert (by_stage[stage]["rows"], by_stage[stage]["ok"], by_stage[stage]["failed"]) == (rows, ok, failed)
    for stage in QA_STAGES:
        exported = q(f"SELECT count(*) FROM '{run.results}/export/datasets/{stage}.parquet'")[0][0]
        assert by_stage[stage]["exported"] == exported == by_stage[stage]["train"] + by_stage[stage]["validation"]
    assert by_stage["seed"] == {
        "stage": "seed",
        "unit": "documents",
        "rows": 5,
        "ok": 4,
        "failed": 1,
        "exported": None,
        "train": None,
        "validation": None,
    }
    assert stats["stats"]["totals"]["pages"] == 16


def test_failures_drops_and_tokens(run, stats):
    tables = stats["stats"]["tables"]
    assert {"stage": "seed", "reason": "http_error", "rows": 1} in tables["failure_reasons"]
    assert {"stage": "single_page_qa", "reason": "length", "rows": 1} in tables["failure_reasons"]
    drops = {(r["stage"], r["filter"]): r["rows"] for r in tables["filter_drops"]}
    assert {k[1]: v for k, v in drops.items() if k[0] == "single_page_qa"} == {
        k: v for k, v in run.expected_drops["single_page_qa"].items() if k != "failed"
    }
    tokens = {(r["stage"], r["model"]): r for r in tables["tokens"]}
    prompt, reasoning = q(
        f"SELECT sum(prompt_tokens), sum(reasoning_tokens) FROM read_parquet({files(run, 'visual_qa')})"
    )[0]
    assert tokens[("visual_qa", "vis-model")]["prompt_tokens"] == prompt
    assert tokens[("visual_qa", "vis-model")]["reasoning_tokens"] == reasoning
    assert ("judge/single_page_qa", "judge-model") in tokens


def test_question_mix_tables(run, stats):
    tables = stats["stats"]["tables"]
    formats = {(r["stage"], r["answer_format"]): r for r in tables["answer_formats"]}
    assert formats[("whole_document_qa", "List")]["ok_rows"] == 4
    assert formats[("visual_qa", "Float")]["ok_rows"] == 8  # "10%", "20%"
    assert formats[("single_page_qa", "None")]["exported_rows"] == 3
    evidence = {(r["stage"], r["num_evidence_pages"], r["evidence_kind"]): r for r in tables["evidence_pages"]}
    assert evidence[("whole_document_qa", 3, "cross-page")]["ok_rows"] == 4
    assert evidence[("windowed_qa", 2, "cross-page")]["ok_rows"] == 8
    assert evidence[("single_page_qa", 1, "unanswerable")]["exported_rows"] == 3
    types = {(r["stage"], r["question_type"]): r for r in tables["question_types"]}
    assert types[("text_qa", "short_answer")] == {
        "stage": "text_qa",
        "question_type": "short_answer",
        "ok_rows": 8,
        "exported_rows": 6,
    }
    quality = {(r["stage"], r["quality_score"]): r["ok_rows"] for r in tables["quality_scores"]}
    assert quality[("whole_document_qa", 2)] == 4 and quality[("single_page_qa", 0)] == 1


def test_judge_and_page_class_tables(run, stats):
    tables = stats["stats"]["tables"]
    scores = {r["score"]: r for r in tables["judge_scores"] if r["stage"] == "single_page_qa"}
    assert (
        scores[0.9]["rows"]
        == q(
            f"SELECT count(*) FROM read_parquet({files(run, 'judge/single_page_qa')}) WHERE weighted_quality_score = 0.9"
        )[0][0]
    )
    assert sum(r["rows"] for r in tables["judge_rubric"] if r["stage"] == "text_qa") == 8 * 5
    classes = {r["category"]: r for r in tables["page_classes"]}
    assert classes["TABULAR"]["pages"] == 4 and classes["QUANTITATIVE"]["primary_pages"] == 0
    assert classes["NONE"]["share"] == 0.5
    sources = {r["evidence_source"]: r["pages"] for r in tables["page_sources"]}
    assert sources == {"text": 8, "table": 4, "chart": 4, "figure/image": 4}


def test_tables_are_written_as_parquet_and_json(stats):
    saved = json.loads((stats["folder"] / "stats.json").read_text())
    assert set(saved["tables"]) == set(STATS_TABLES)
    for name, path in stats["tables"].items():
        assert pq.read_table(path).to_pylist() == saved["tables"][name], name


def test_every_figure_is_drawn(stats, tmp_path):
    outputs = {name: str(tmp_path / f"{name}.png") for name in FIGURES}
    draw_figures(stats["stats"], outputs, {"judge_score_bins": 10, "min_judge_score": 0.6})
    for name, path in outputs.items():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200, name
    html = summary_html(stats["stats"])
    assert "<td>single_page_qa</td><td>rows</td><td>17</td><td>16</td><td>1</td><td>10</td>" in html


def test_figures_without_data_say_so(tmp_path):
    empty = compute_stats({})
    empty.pop("_arrow")
    outputs = {name: str(tmp_path / f"{name}.png") for name in FIGURES}
    draw_figures(empty, outputs, {})
    assert all((tmp_path / f"{name}.png").stat().st_size > 1000 for name in FIGURES)


def test_verify_agreement_per_stage_and_question_type(tmp_path):
    import pyarrow as pa

    path = tmp_path / "verify" / "windowed_qa" / "00000.parquet"
    path.parent.mkdir(parents=True)
    rows = [  # (question type, format, status, score)
        ("numerical_int", "Int", "ok", 1.0),
        ("numerical_int", "Int", "ok", 0.0),
        ("numerical_int", "Int", "failed", 0.0),  # no verdict: not counted
        ("string", "Str", "ok", 0.75),  # >= 0.5: agrees
        ("string", "Str", "ok", 0.0),
        ("string", "Str", "ok", 1.0),
    ]
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"row_id": f"verify:r{i}", "status": s, "question_type": q, "benchmark_format": f, "verify_score": v}
                for i, (q, f, s, v) in enumerate(rows)
            ]
        ),
        path,
    )
    stats = compute_stats({"verify": [str(path)]}, {"min_verify_score": {"Int": 1.0, "Str": 0.5}})
    got = {r["question_type"]: r for r in stats["tables"]["verify_agreement"]}
    assert got["numerical_int"] == {
        "stage": "windowed_qa",
        "question_type": "numerical_int",
        "benchmark_format": "Int",
        "verified_rows": 2,
        "agreeing_rows": 1,
        "mean_verify_score": 0.5,
    }
    assert (got["string"]["verified_rows"], got["string"]["agreeing_rows"]) == (3, 2)
    assert got["string"]["mean_verify_score"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    page = summary_html(stats)
    assert "Verify: independent answers" in page and "<td>67%</td>" in page and "<td>50%</td>" in page


def test_next_command_suggests_models_only_for_stages_that_lack_one():
    from longdoc_sdg.report.summary import next_command

    base = {"results": "results", "logs": "results/logs/", "demo": False}
    disabled = {**base, "skipped": [{"stage": "verify", "why": "disabled in config", "mode": "disabled"}]}
    assert next_command(disabled, []).startswith("snakemake --profile profiles/local --report")
    no_model = {**disabled, "skipped": [*disabled["skipped"], {"stage": "judge", "why": "-", "mode": "unavailable"}]}
    assert next_command(no_model, []).startswith("give the skipped stages a model")
    demo = {**disabled, "results": "results-demo", "demo": True}
    assert next_command(demo, []).startswith("open results-demo/report.html")


def test_summary_stage_column_fits_the_longest_label():
    from longdoc_sdg.report.summary import build_summary, render_text

    row = {"unit": "rows", "rows": 3, "ok": 3, "failed": 0, "exported": None, "train": None, "validation": None}
    stats = {
        "generated": "2026-01-01T00:00:00+00:00",
        "totals": {"documents_listed": 1, "documents_seeded": 1, "documents_failed": 0, "pages": 3, "exported": {}},
        "tables": {
            "stage_yield": [{**row, "stage": "judge/whole_document_qa"}, {**row, "stage": "ocr"}],
            "failure_reasons": [],
            "tokens": [],
        },
    }
    skipped = [{"stage": "whole_document_qa", "why": "its model is missing", "mode": "unavailable"}]
    plan = {"results": "results", "skipped": skipped, "served": {}, "report": True, "export": {}}
    lines = render_text(build_summary(stats, plan, {})).splitlines()
    judge = next(line for line in lines if line.startswith("judge/whole_document_qa"))
    ocr = next(line for line in lines if line.startswith("ocr (rows)"))
    skipped_line = next(line for line in lines if line.startswith("whole_document_qa (skipped)"))
    # The counts line up under the header, and a label never runs into the next column.
    assert judge.index(" 3 ") == ocr.index(" 3 ")
    assert skipped_line.split("(skipped)")[1].startswith(" ")
