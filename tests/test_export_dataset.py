"""Final datasets and their two layouts, on a synthetic results folder (fast, no Snakemake).

Covers: every export filter drops what it should (and is counted once), near-duplicate questions
within a document, the split by document, the reference layout's base64 round trip, the Hub folder
loading offline with `datasets.load_dataset`, the dataset card's counts/models/filters, and file
rotation at the size cap.
"""

from __future__ import annotations

import collections
import json
from hashlib import sha256
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers.export_run import SyntheticRun, load_hub_offline, png_bytes, reference_rows
from longdoc_sdg.export.common import answer_format_sql, normalised_question_sql
from longdoc_sdg.export.dataset import DROP_ORDER, build_dataset
from longdoc_sdg.export.hub import write_hub
from longdoc_sdg.export.reference import decode_images, write_reference
from longdoc_sdg.export.split import assign_splits
from longdoc_sdg.registry import qa_stages

QA_STAGES = qa_stages()

SETTINGS = {"filters": {"min_judge_score": 0.6}, "split": {"validation_fraction": 0.3, "seed": "t"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SyntheticRun:
    return SyntheticRun(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def exported(run) -> dict:
    out = run.results / "export" / "datasets"
    summaries = {}
    for stage in QA_STAGES:
        summaries[stage] = build_dataset(
            stage,
            run.dataset_inputs(stage),
            str(out / f"{stage}.parquet"),
            str(out / f"{stage}.summary.json"),
            SETTINGS,
        )
    return {"dir": out, "summaries": summaries}


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_each_filter_drops_its_rows_once(exported):
    s = exported["summaries"]["single_page_qa"]
    dropped = {k: v for k, v in s["dropped"].items() if v}
    assert dropped == {
        "duplicate": 1,
        "failed": 1,
        "judge_score": 1,
        "judge_missing": 1,
        "format": 1,
        "quality_score": 1,
        "evidence": 1,
    }
    assert s["rows"] == s["kept"] + sum(s["dropped"].values())
    kept = rows(exported["dir"] / "single_page_qa.parquet")
    assert len(kept) == s["kept"] == 1 + 3 * 3  # d0 keeps one row, d1-d3 keep three each
    assert all(
        r["weighted_quality_score"] >= 0.6 and r["format_ok"] and r["quality_score"] >= 1 and r["evidence_ok"]
        for r in kept
    )
    assert [f["name"] for f in s["filters"]] == [
        n
        for n in DROP_ORDER
        if n not in ("relevance", "correctness", "verify", "contaminated")  # not verified, no benchmark
    ]


def test_text_and_visual_filters_use_relevance_and_correctness(exported):
    text = exported["summaries"]["text_qa"]
    assert text["dropped"]["relevance"] == 1 and text["dropped"]["correctness"] == 1
    assert text["kept"] == 8 - 2
    assert "quality_score" not in {f["name"] for f in text["filters"]}
    kept = rows(exported["dir"] / "text_qa.parquet")
    assert all(r["transcribed_texts"] == f"text of {r['doc_id']} page {r['pages'][0]}" for r in kept)
    visual = rows(exported["dir"] / "visual_qa.parquet")
    assert all(json.loads(r["page_classification"])["primary_categories"] for r in visual)


def test_near_duplicates_are_removed_within_a_document_only(exported):
    kept = rows(exported["dir"] / "single_page_qa.parquet")
    same = [r for r in kept if r["question"].lower().startswith("what is the total revenue")]
    # one per document: d0 keeps the better-judged of its two near-identical questions
    assert sorted(r["doc_id"] for r in same) == ["d0", "d1", "d2", "d3"]
    d0 = next(r for r in same if r["doc_id"] == "d0")
    assert d0["row_id"].endswith("p0002:q0") and d0["weighted_quality_score"] == 0.9


def test_dedup_keep_first_keeps_the_lowest_row_id(run, tmp_path):
    settings = {**SETTINGS, "dedup": {"keep": "first"}}
    build_dataset(
        "single_page_qa",
        run.dataset_inputs("single_page_qa"),
        str(tmp_path / "d.parquet"),
        str(tmp_path / "s.json"),
        settings,
    )
    d0 = [r for r in rows(tmp_path / "d.parquet") if r["doc_id"] == "d0"]
    assert [r["row_id"] for r in d0] == ["single_page_qa:d0:p0001:q0"]


def test_disabling_a_filter_or_dedup_keeps_more(run, tmp_path):
    loose = {
        "filters": {"min_judge_score": None, "require_format_ok": False},
        "dedup": {"enabled": False},
        "split": SETTINGS["split"],
    }
    s = build_dataset(
        "single_page_qa",
        run.dataset_inputs("single_page_qa"),
        str(tmp_path / "d.parquet"),
        str(tmp_path / "s.json"),
        loose,
    )
    assert s["dropped"]["judge_score"] == s["dropped"]["format"] == s["dropped"]["duplicate"] == 0
    assert s["kept"] == 10 + 3


def _documents_with_sha(run, tmp_path, sha: dict[str, str]) -> list[str]:
    """The synthetic run's seed documents tables, each document given the sha256 `sha` names."""
    files = []
    for source in run.seed_files("documents"):
        table = pq.read_table(source)
        table = table.append_column("sha256", pa.array([sha[d] for d in table.column("doc_id").to_pylist()]))
        path = tmp_path / "seed" / Path(source).parent.name / "documents.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(table, path)
        files.append(str(path))
    return files


@pytest.mark.parametrize("documents_dedup", [True, False])
def test_a_document_seeded_again_in_a_later_shard_is_dropped_whole(run, tmp_path, documents_dedup):
    # d3 (shard 00001) holds the bytes of d1 (shard 00000): one PDF under two URLs, which the seed
    # of a download cannot compare across shards.
    inputs = {
        **run.dataset_inputs("single_page_qa"),
        "documents": _documents_with_sha(run, tmp_path, {"d0": "a0", "d1": "b1", "d2": "c2", "d3": "b1"}),
    }
    settings = {**SETTINGS, "dedup": {"documents": documents_dedup}}
    s = build_dataset("single_page_qa", inputs, str(tmp_path / "d.parquet"), str(tmp_path / "s.json"), settings)
    baseline = build_dataset(
        "single_page_qa",
        run.dataset_inputs("single_page_qa"),
        str(tmp_path / "b.parquet"),
        str(tmp_path / "b.json"),
        SETTINGS,
    )
    kept = collections.Counter(r["doc_id"] for r in rows(tmp_path / "d.parquet"))
    before = collections.Counter(r["doc_id"] for r in rows(tmp_path / "b.parquet"))
    assert s["rows"] == s["kept"] + sum(s["dropped"].values())
    if not documents_dedup:
        assert kept == before and s["dropped"]["duplicate_document"] == 0 and "duplicate_documents" not in s
        return
    d3_ok = duckdb.execute(
        f"SELECT count(*) FROM read_parquet({run.files('single_page_qa')}) WHERE doc_id = 'd3' AND status = 'ok'"
    ).fetchone()[0]
    assert d3_ok > 0 and s["dropped"]["duplicate_document"] == d3_ok
    assert "d3" not in kept and kept == {d: n for d, n in before.items() if d != "d3"}
    assert s["duplicate_documents"] == [{"doc_id": "d3", "same_bytes_as": "d1", "sha256": "b1"}]
    assert "duplicate_document" in {f["name"] for f in s["filters"]}
    assert baseline["dropped"]["duplicate_document"] == 0  # seeds without sha256: nothing is a copy


def test_unjudged_stage_skips_judge_filters(run, tmp_path):
    s = build_dataset(
        "single_page_qa",
        run.dataset_inputs("single_page_qa", judged=False),
        str(tmp_path / "d.parquet"),
        str(tmp_path / "s.json"),
        SETTINGS,
    )
    assert not s["judged"] and "judge" not in s["models"]
    assert s["dropped"]["judge_missing"] == s["dropped"]["judge_score"] == 0
    assert "weighted_quality_score" not in pq.read_schema(tmp_path / "d.parquet").names


def test_split_is_by_document_and_the_same_in_every_stage(exported):
    doc_split = {}
    for stage in QA_STAGES:
        for r in rows(exported["dir"] / f"{stage}.parquet"):
            assert doc_split.setdefault(r["doc_id"], r["split"]) == r["split"], (stage, r["doc_id"])
    assert set(doc_split.values()) == {"train", "validation"}
    expected = assign_splits(["d0", "d1", "d2", "d3"], 0.3, "t", 1)
    assert doc_split == {d: expected[d] for d in doc_split}


def test_assign_splits_is_stable_as_the_run_grows():
    docs = [f"doc{i}" for i in range(200)]
    first = assign_splits(docs, 0.2, "s")
    grown = assign_splits(docs + [f"new{i}" for i in range(100)], 0.2, "s")
    assert all(grown[d] == first[d] for d in docs)
    assert 20 <= sum(v == "validation" for v in first.values()) <= 60
    small = assign_splits(["a", "b", "c"], 0.01, "s", min_validation=1)
    assert sorted(small.values()) == ["train", "train", "validation"]
    assert assign_splits(["only"], 0.5, "s", min_validation=1) in ({"only": "train"}, {"only": "validation"})
    assert set(assign_splits(docs, 0.0, "s", min_validation=1).values()) == {"train"}


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("42", "Int"),
        ("-3", "Int"),
        ("1,234", "Int"),
        ("3.5", "Float"),
        ("12%", "Float"),
        ("12.5 %", "Float"),
        ('["a", "b"]', "List"),
        ("Not answerable", "None"),
        ("B. 42 units", "Str"),
        ("Yes", "Str"),
        ("", "Str"),
    ],
)
def test_answer_format_follows_the_benchmark(answer, expected):
    got = duckdb.execute(f"SELECT {answer_format_sql('a')} FROM (SELECT ?::VARCHAR AS a)", [answer]).fetchall()[0][0]
    assert got == expected


def test_question_normalisation():
    def norm(q):
        return duckdb.execute(f"SELECT {normalised_question_sql('q')} FROM (SELECT ?::VARCHAR AS q)", [q]).fetchall()[
            0
        ][0]

    assert (
        norm("What is the TOTAL revenue, in 2020?")
        == norm("what is the total revenue in 2020")
        == "what is the total revenue in 2020"
    )
    assert norm("Quelle est la marge brute ?") == "quelle est la marge brute"
    assert norm("表1的总额是多少？") == "表1的总额是多少"
    assert norm("Revenue in 2020?") != norm("Revenue in 2021?")


def test_reference_layout_round_trips_the_pngs(run, exported, tmp_path):
    pages = run.seed_files("pages")
    for stage in QA_STAGES:
        out = tmp_path / stage
        manifest = write_reference(stage, str(exported["dir"] / f"{stage}.parquet"), pages, str(out), 500)
        table_rows = reference_rows(out)
        assert (
            len(table_rows)
            == exported["summaries"][stage]["kept"]
            == sum(s["rows"] for s in manifest["splits"].values())
        )
        for r in table_rows:
            doc_id = r["trace"]["doc_id"]
            assert r["id"] == f"<urn:uuid:{doc_id}>" and r["url"].endswith(f"{doc_id}.pdf")
            assert r["total_pages"] == 4
            doc = int(doc_id[1:])
            pages_of_row = r.get("page_number") is not None and [r["page_number"] + 1]  # 0-based there
            if stage == "windowed_qa":
                pages_of_row = list(range(r["start_page"] + 1, r["end_page"] + 1))  # end exclusive
                assert r["window_size"] == len(pages_of_row)
            if stage == "whole_document_qa":
                pages_of_row = [1, 2, 3, 4]
            assert pages_of_row == r["trace"]["pages"]
            assert decode_images(r["png_images_base64"]) == [png_bytes(doc, p) for p in pages_of_row]
            question = r["question_and_answer"]["question"] if stage == "text_qa" else r["question"]
            assert question
    judged = [r["trace"] for r in reference_rows(tmp_path / "single_page_qa")]
    assert all(r["weighted_quality_score"] is not None and json.loads(r["qa_quality_judge"]) for r in judged)


@pytest.fixture(scope="module")
def hub(run, exported, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "hub"
    datasets = {s: str(exported["dir"] / f"{s}.parquet") for s in QA_STAGES}
    params = {
        "card": {"license": "cc-by-4.0"},
        "max_file_mb": 500,
        "source": {"kind": "finepdfs", "dataset": "HuggingFaceFW/finepdfs", "subset": "eng_Latn"},
        "code_version": "9.9.9",
    }
    meta = write_hub(datasets, exported["summaries"], run.seed_files("pages"), str(folder), params)
    return {"folder": folder, "meta": meta}


def test_hub_folder_loads_offline_with_images(hub, exported, tmp_path):
    loaded = load_hub_offline(hub["folder"], list(QA_STAGES), tmp_path)
    for stage in QA_STAGES:
        summary = exported["summaries"][stage]
        assert {s: v["num_rows"] for s, v in loaded[stage].items()} == {s: n for s, n in summary["splits"].items() if n}
        for split, part in loaded[stage].items():
            assert part["image_feature"] == "Image" and part["first_image"] == ["PIL.PngImagePlugin", [24, 32]]
            for r in part["rows"]:
                doc = int(r["doc_id"][1:])
                assert r["images"] == [sha256(png_bytes(doc, p)).hexdigest() for p in r["pages"]]
                assert isinstance(r["evidence_pages"], list) and r["answer_format"] in (
                    "Int",
                    "Float",
                    "Str",
                    "List",
                    "None",
                )


def test_dataset_card_states_counts_models_filters(hub, exported):
    text = (hub["folder"] / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "cc-by-4.0" and meta["source_datasets"] == ["HuggingFaceFW/finepdfs"]
    assert [c["config_name"] for c in meta["configs"]] == list(QA_STAGES)
    assert meta["configs"][0].get("default") is True
    for info in meta["dataset_info"]:
        summary = exported["summaries"][info["config_name"]]
        assert {s["name"]: s["num_examples"] for s in info["splits"]} == {
            k: v for k, v in summary["splits"].items() if v
        }
    assert "`gen-model`" in text and "`judge-model`" in text and "`cls-model`" in text and "`pdf-text`" in text
    assert "judge weighted quality score ≥ 0.6" in text
    single = next(line for line in text.splitlines() if line.startswith("| `single_page_qa` | 17 |"))
    assert single.endswith("| 10 |")  # generated 17, kept 10
    assert "9.9.9" in text


def test_files_rotate_at_the_size_cap(run, exported, tmp_path):
    import pyarrow as pa

    from longdoc_sdg.export.layout import write_layout

    schema = pa.schema([("row_id", pa.string()), ("png", pa.binary())])

    def make_row(row, records):
        return {"row_id": row["row_id"], "png": records[0].png}

    # row groups of 2 rows; a 1-byte cap closes the file after every row group
    splits = write_layout(
        str(exported["dir"] / "single_page_qa.parquet"),
        run.seed_files("pages"),
        tmp_path,
        schema,
        make_row,
        max_file_bytes=1,
        row_group_rows=2,
    )
    for split, files in splits.items():
        n = len(files.files)
        assert files.files == [f"{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        assert [pq.read_metadata(tmp_path / f).num_rows for f in files.files] == [2] * (files.rows // 2) + (
            [1] if files.rows % 2 else []
        )
    assert sum(f.rows for f in splits.values()) == exported["summaries"]["single_page_qa"]["kept"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_verify_filter_drops_disagreements_by_format(run, exported, tmp_path):
    """Two rows the export keeps get a disagreeing verify verdict (dropped, counted as 'verify');
    an ANLS-scored row above its 0.5 threshold, a failed verify row and unverified rows stay."""
    import pyarrow as pa

    baseline = sorted(
        (r for r in rows(exported["dir"] / "single_page_qa.parquet") if "total revenue" not in r["question"].lower()),
        key=lambda r: r["row_id"],
    )
    disagree, partial, failed = baseline[:2], baseline[2], baseline[3]
    verdicts = [(r, "ok", "Int", 0.0) for r in disagree] + [(partial, "ok", "Str", 0.6), (failed, "failed", "Int", 0.0)]
    verify_path = tmp_path / "verify.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "row_id": f"verify:{r['row_id']}",
                    "qa_row_id": r["row_id"],
                    "status": status,
                    "model": "verifier",
                    "benchmark_format": fmt,
                    "verify_answer": "x",
                    "verify_score": score,
                }
                for r, status, fmt, score in verdicts
            ]
        ),
        verify_path,
    )
    inputs = {**run.dataset_inputs("single_page_qa"), "verify": [str(verify_path)]}
    s = build_dataset("single_page_qa", inputs, str(tmp_path / "d.parquet"), str(tmp_path / "s.json"), SETTINGS)
    base = exported["summaries"]["single_page_qa"]
    assert s["verified"] and s["models"]["verify"] == ["verifier"]
    assert s["dropped"]["verify"] == 2
    assert s["kept"] == base["kept"] - 2
    kept = {r["row_id"]: r for r in rows(tmp_path / "d.parquet")}
    assert not {r["row_id"] for r in disagree} & set(kept)
    assert kept[partial["row_id"]]["verify_score"] == 0.6 and kept[failed["row_id"]]["verify_score"] == 0.0
    assert "verify" in [f["name"] for f in s["filters"]]
    # without thresholds nothing is dropped for disagreement
    loose = {**SETTINGS, "filters": {**SETTINGS["filters"], "min_verify_score": None}}
    s = build_dataset("single_page_qa", inputs, str(tmp_path / "d2.parquet"), str(tmp_path / "s2.json"), loose)
    assert s["dropped"]["verify"] == 0 and s["kept"] == base["kept"]
