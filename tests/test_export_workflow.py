"""Export, publish (dry run) and report end to end: the real stages run by Snakemake against the fake
OpenAI server (a test double), on the shared finished run of tests/helpers/fake_run.py (two
shards, verify on two QA stages, the judge threshold at 0.5).

Checked: the Hub folder loads every QA split with images and its row counts equal a
filtered DuckDB count over the shards; the reference layout round-trips its PNGs; the card states
the counts, models and filters of the run; `snakemake --report` makes a report whose figures a
headless Chromium shows and whose numbers match DuckDB; changing a filter threshold reruns the
export and report, not the model stages.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import unicodedata
from hashlib import sha256
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import require
from helpers.export_run import load_hub_offline, reference_rows
from helpers.fake_run import MIN_JUDGE_SCORE, VERIFIED
from helpers.workflow import planned_jobs
from longdoc_sdg.config import ExportFilters
from longdoc_sdg.export.reference import decode_images, reference_schema
from longdoc_sdg.export.split import assign_splits
from longdoc_sdg.registry import qa_stages
from longdoc_sdg.report.figures import FIGURES

QA_STAGES = qa_stages()

pytestmark = pytest.mark.workflow

MODEL_RULES = {
    "seed",
    "ocr",
    "text_qa",
    "classify",
    "visual_qa",
    "single_page_qa",
    "windowed_qa",
    "whole_document_qa",
    "judge",
    "verify",
    "serve",
}
EXPORT_RULES = {
    "export_dataset",
    "export_reference",
    "export_hub",
    "publish",
    "stats",
    "report_figures",
    "report_samples",
    "summary",
    "all",
}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@pytest.fixture(scope="module")
def wf(fake_run):
    return {"dir": fake_run.dir, "results": fake_run.results, "config": fake_run.config, "run": fake_run}


def shard_files(wf, stage: str) -> list[str]:
    return sorted(str(p) for p in (wf["results"] / stage).glob("*.parquet"))


def norm(question: str) -> str:
    text = unicodedata.normalize("NFC", question or "").lower()
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def expected_counts(wf, stage: str) -> dict[str, int]:
    """The final dataset's rows per split, recomputed here: DuckDB over the QA and judge shards,
    the configured filters (verify verdicts included), near-duplicates by normalised question
    within a document."""
    f = {"min_judge_score": MIN_JUDGE_SCORE, "min_quality_score": 1}
    qa = shard_files(wf, stage)
    judge = shard_files(wf, f"judge/{stage}")
    con = duckdb.connect()
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({qa})").fetchall()}
    where = ["q.status = 'ok'", "j.status = 'ok'", f"j.weighted_quality_score >= {f['min_judge_score']}", "q.format_ok"]
    verify_join = ""
    if stage in VERIFIED:  # a verdict under its format's threshold drops the row
        thresholds = ExportFilters().min_verify_score
        cases = " ".join(f"WHEN '{fmt}' THEN {value}" for fmt, value in thresholds.items())
        verify_join = f" LEFT JOIN read_parquet({shard_files(wf, f'verify/{stage}')}) v ON v.qa_row_id = q.row_id"
        where.append(f"NOT coalesce(v.status = 'ok' AND v.verify_score < (CASE v.benchmark_format {cases} END), false)")
    if "quality_score" in cols:
        where += [f"q.quality_score >= {f['min_quality_score']}", "q.evidence_ok"]
    if "question_relevance" in cols:
        where += ["q.question_relevance = 'Relevant'", "q.answer_correctness = 'Correct'"]
    order = "j.weighted_quality_score DESC" + (", q.quality_score DESC" if "quality_score" in cols else "")
    rows = con.execute(f"""SELECT q.doc_id, q.question FROM read_parquet({qa}) q
        JOIN read_parquet({judge}) j ON j.qa_row_id = q.row_id{verify_join}
        WHERE {" AND ".join(where)} ORDER BY q.doc_id, {order}, q.row_id""").fetchall()
    seen, kept = set(), []
    for doc_id, question in rows:
        if (doc_id, norm(question)) not in seen:
            seen.add((doc_id, norm(question)))
            kept.append(doc_id)
    docs = [
        r[0]
        for r in con.execute(
            f"SELECT doc_id FROM read_parquet({sorted(str(p) for p in wf['results'].glob('seed/*/documents.parquet'))})"
        ).fetchall()
    ]
    fraction = wf["config"]["export"]["settings"]["split"]["validation_fraction"]
    splits = assign_splits(docs, fraction, "longdoc-sdg", 1)
    counts = {"train": 0, "validation": 0}
    for doc_id in kept:
        counts[splits[doc_id]] += 1
    return counts


def page_pngs(wf) -> dict[tuple[str, int], bytes]:
    out = {}
    for path in wf["results"].glob("seed/*/pages.parquet"):
        for r in pq.read_table(path, columns=["doc_id", "page_number", "png"]).to_pylist():
            out[(r["doc_id"], r["page_number"])] = r["png"]
    return out


def test_every_qa_stage_ran_in_two_shards(wf):
    for stage in QA_STAGES:
        assert len(shard_files(wf, stage)) == 2 and len(shard_files(wf, f"judge/{stage}")) == 2


def test_hub_folder_loads_every_split_with_images_and_duckdb_counts(wf, tmp_path):
    pngs = {key: sha256(png).hexdigest() for key, png in page_pngs(wf).items()}
    expected = {stage: expected_counts(wf, stage) for stage in QA_STAGES}
    for stage in QA_STAGES:
        summary = json.loads((wf["results"] / "export" / "datasets" / f"{stage}.summary.json").read_text())
        assert summary["splits"] == expected[stage], stage
    loadable = [s for s in QA_STAGES if sum(expected[s].values())]
    assert len(loadable) >= 4  # the fake server's mix leaves rows in (almost) every stage
    loaded = load_hub_offline(wf["results"] / "export" / "hub", loadable, tmp_path)
    for stage in loadable:
        assert {s: v["num_rows"] for s, v in loaded[stage].items()} == {
            s: n for s, n in expected[stage].items() if n
        }, stage
        for part in loaded[stage].values():
            assert part["image_feature"] == "Image" and part["first_image"][0] == "PIL.PngImagePlugin"
            for r in part["rows"]:
                assert r["images"] == [pngs[(r["doc_id"], p)] for p in r["pages"]]


def test_reference_layout_round_trips_the_pngs(wf):
    pngs = page_pngs(wf)
    for stage in QA_STAGES:
        folder = wf["results"] / "export" / "reference" / stage
        rows = reference_rows(folder)
        summary = json.loads((wf["results"] / "export" / "datasets" / f"{stage}.summary.json").read_text())
        assert len(rows) == summary["kept"]
        for r in rows:
            trace = r.pop("trace")
            assert decode_images(r["png_images_base64"]) == [pngs[(trace["doc_id"], p)] for p in trace["pages"]]
            assert [f.name for f in reference_schema(stage)] == list(r)
            assert trace["weighted_quality_score"] is not None and json.loads(trace["qa_quality_judge"])


def test_dataset_card_states_counts_models_and_filters(wf):
    text = (wf["results"] / "export" / "hub" / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    for info in meta["dataset_info"]:
        stage = info["config_name"]
        assert {s["name"]: s["num_examples"] for s in info["splits"]} == {
            k: v for k, v in expected_counts(wf, stage).items() if v
        }
        row = next(line for line in text.splitlines() if line.startswith(f"| `{stage}` |") and "judge:" in line)
        assert "`fake-model`" in row
    assert "ocr: `pdf-text`" in text
    assert f"judge weighted quality score ≥ {wf['config']['export']['settings']['filters']['min_judge_score']}" in text
    assert meta["license"] == "other" and "source_datasets" not in meta


def test_publish_dry_run_records_the_hub_folder(wf):
    record = json.loads((wf["results"] / "export" / "publish.json").read_text())
    hub = wf["results"] / "export" / "hub"
    assert record["dry_run"] is True and record["repo_id"] == "org/longdoc-test" and record["private"] is True
    assert {f["path"] for f in record["files"]} == {
        p.relative_to(hub).as_posix() for p in hub.rglob("*") if p.is_file()
    }


def report_results(wf) -> dict:
    html = (wf["dir"] / "report.html").read_text()
    match = re.search(r"var results = (\{.*?\});?\n", html)
    assert match, "no results object in report.html"
    return json.loads(match.group(1))


def test_report_embeds_every_figure_and_numbers_match_duckdb(wf):
    results = report_results(wf)
    by_name = {Path(path).name: entry for path, entry in results.items()}
    assert set(by_name) == {f"{name}.png" for name in FIGURES} | {"summary.html", "samples.html"}
    for name in FIGURES:
        uri = by_name[f"{name}.png"]["data_uri"]
        data = base64.b64decode(uri.split("base64,", 1)[1])
        assert data == (wf["results"] / "report" / "figures" / f"{name}.png").read_bytes(), name
        assert by_name[f"{name}.png"]["caption"], name
    summary = base64.b64decode(by_name["summary.html"]["data_uri"].split("base64,", 1)[1]).decode()
    con = duckdb.connect()
    for stage in ("ocr", "classify", *QA_STAGES):
        rows, ok, failed = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status <> 'ok') "
            f"FROM read_parquet({shard_files(wf, stage)})"
        ).fetchall()[0]
        cells = f"<td>{stage}</td><td>rows</td><td>{rows:,}</td><td>{ok:,}</td><td>{failed:,}</td>"
        assert cells in summary, (stage, cells)
    stats = json.loads((wf["results"] / "report" / "stats.json").read_text())
    judge_ok = con.execute(
        f"SELECT count(*) FROM read_parquet({shard_files(wf, 'judge/single_page_qa')}) WHERE status = 'ok'"
    ).fetchall()[0][0]
    assert sum(r["rows"] for r in stats["tables"]["judge_scores"] if r["stage"] == "single_page_qa") == judge_ok
    assert f"threshold ({MIN_JUDGE_SCORE})" in by_name["judge_scores.png"]["caption"]  # the threshold, through params


def chromium(args: list[str], tmp: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    require(binary is not None, "Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def count_color(png: Path, rgb: tuple[int, int, int]) -> int:
    from PIL import Image

    with Image.open(png) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return sum(n for n, color in colors if color == rgb)


def test_report_renders_in_headless_chromium_with_its_figures(wf, tmp_path):
    report = wf["dir"] / "report.html"
    dom = chromium(["--dump-dom", report.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for category in ("Yield", "Question mix", "Quality", "Cost", "Pages", "Summary"):
        assert f">{category}<" in dom.stdout, category  # the report's menu, rendered by its scripts

    # Open the yield figure the way a click in the report does, then look at the screen.
    html = report.read_text()
    click = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var entry = Object.entries(results).find(function (e) { return e[0].endsWith('stage_yield.png'); });
  app.setView({content: 'img', contentPath: entry[1].data_uri});
}, 300); });
</script>"""
    head, tag, tail = html.rpartition("</body>")
    clicked = tmp_path / "report_yield.html"
    clicked.write_text(head + click + tag + tail)
    dom = chromium(["--dump-dom", clicked.as_uri()], tmp_path)
    assert 'src="data:image/png;charset=utf8;filename=stage_yield.png;base64,' in dom.stdout
    shot = tmp_path / "yield.png"
    chromium([f"--screenshot={shot}", clicked.as_uri()], tmp_path)
    assert shot.stat().st_size > 10_000
    # the bars of the yield figure, in their exact colours, are on screen
    assert count_color(shot, (0x3A, 0x9A, 0x5B)) > 500  # ok rows (green)
    assert count_color(shot, (0xB0, 0xB7, 0xC3)) > 500  # processed rows (grey)


def test_filter_change_reruns_export_and_report_not_model_stages(wf, tmp_path):
    run = wf["run"]
    strict = run.changed_config(
        lambda c: c["export"]["settings"]["filters"].update(min_judge_score=0.8), tmp_path / "config_strict.yaml"
    )
    dry = run.snakemake("-n", configfile=strict)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = planned_jobs(dry.stdout + dry.stderr)
    assert jobs.get("export_dataset") == len(QA_STAGES) and jobs.get("export_reference") == len(QA_STAGES)
    assert {"export_hub", "publish", "stats", "report_figures"} <= set(jobs)
    assert not set(jobs) & MODEL_RULES, jobs
    assert set(jobs) <= EXPORT_RULES, jobs
