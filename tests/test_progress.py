"""The run's progress lines (longdoc_sdg.progress): the plan counted from the workflow's own
outputs, and the status line when a run does more than it planned. Plus a guard that the
workflow reads no Snakemake internals (its DAG, settings objects or executor plugin), so the
pinned version range (pyproject.toml) keeps working."""

from __future__ import annotations

import re

from conftest import REPO
from longdoc_sdg import progress


def test_plan_counts_jobs_with_an_output_missing(tmp_path):
    done = tmp_path / "a.parquet"
    done.write_text("x")
    half = [str(done), str(tmp_path / "b.parquet")]
    jobs = {"seed": [[str(done)], half], "ocr": [[str(tmp_path / "c.parquet")]], "judge": []}
    assert progress.missing_jobs(jobs) == {"seed": 1, "ocr": 1, "judge": 0}


def test_status_line_never_shows_more_done_than_planned():
    plan = {"started": 100.0, "planned": {"ocr": 1}}
    done = [
        {"rule": "ocr", "shard": "00000", "rows": 4, "seconds": 2.0, "unit": "rows"},
        # a job redone although its output existed (e.g. --forcerun): not in the plan
        {"rule": "ocr", "shard": "00001", "rows": 6, "seconds": 2.0, "unit": "rows"},
    ]
    line = progress.status_line(plan, done, 130.0, done[-1])
    assert "ocr 2/2 shard(s), 10 rows, 2.5 rows/s per job" in line
    assert "run 2/2 tracked jobs" in line and "ETA -" in line


def test_report_job_appends_and_prints_against_the_plan(tmp_path, capsys):
    results = str(tmp_path / "results")
    assert progress.report_job(results, "ocr", "00000", 3, 1.0) is None  # no run, no plan
    progress.record_plan(results, {"seed": 1, "ocr": 2})
    progress.report_job(results, "seed", "00000", 10, 2.0, unit="pages")
    line = progress.report_job(results, "ocr", "00000", 3, 1.0)
    assert line.startswith("[progress] ocr 00000 done: ocr 1/2 shard(s), 3 rows")
    assert "run 2/3 tracked jobs" in line


# Attributes of Snakemake's `workflow` object and DAG that are not documented API: they move
# between releases (the reason for a version range instead of one exact pin).
PRIVATE = re.compile(
    r"\bworkflow\.(dag|dag_settings|executor_plugin|dryrun|touch|persistence|scheduler|_\w+)\b|needrun"
)


def test_workflow_reads_no_snakemake_internals():
    sources = [*(REPO / "workflow").rglob("*.smk"), REPO / "workflow" / "Snakefile"]
    sources += (REPO / "workflow" / "scripts").rglob("*.py")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert found == []
