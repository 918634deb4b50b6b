"""The stage registry is the one place a stage is declared: row ids round-trip through their
type, and a toy QA stage added to a copy of the workflow (one registry entry, one handler
module, one prompt; the schema regenerated from them) is planned by Snakemake with its own
rule, its judge jobs and its export."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, SAMPLE_PDF_DIR
from helpers.workflow import planned_jobs
from longdoc_sdg.ids import RowId
from longdoc_sdg.registry import STAGES, get_spec, model_stages, qa_stages

TOY_ENTRY = """
STAGES = STAGES + (
    StageSpec(
        "page_count_qa", 10, "qa", "Asks how many pages a document has",
        inputs=("documents", "pages"), handler="longdoc_sdg.stages.page_count_qa:PageCountQaStage",
        unit="document", question_types="anchored",
    ),
)
"""

TOY_HANDLER = '''"""A toy QA stage: one question per document about its page count."""

from pydantic import Field

from ..ids import RowId
from .base import ModelStageConfig, Plan, RowTask, Stage, StageOutput, iter_rows, user_message


class PageCountQaConfig(ModelStageConfig):
    prompt_template: str = Field("page_count_qa.j2", description="Prompt template of the question.")


class PageCountQaOutput(StageOutput):
    question_type: str = Field(description="Always short_answer.")
    question: str
    answer: str


class PageCountQaStage(Stage):
    config_model = PageCountQaConfig
    output_model = PageCountQaOutput

    def plan(self, config, inputs):
        def tasks():
            for row in iter_rows(inputs["documents"], ["doc_id", "total_pages"]):
                row_id = str(RowId.document(self.name, row["doc_id"]).questions(1)[0])
                yield RowTask(row_id, row["doc_id"], [1], {"total_pages": row["total_pages"]})

        return Plan([t.row_id for t in tasks()], tasks)

    async def process(self, task, ctx, calls):
        prompt = ctx.templates["prompt_template"].render(total_pages=task.data["total_pages"])
        result = await calls.chat(user_message(prompt), sampling={}, max_tokens=ctx.config.max_tokens)
        return {"question_type": "short_answer", "question": prompt, "answer": result.content}
'''

TOY_PROMPT = "This document has {{ total_pages }} pages. Ask how many pages it has.\n"


def test_row_ids_round_trip():
    page = RowId.page("ocr", "0123abcd", 7)
    assert str(page) == "ocr:0123abcd:p0007" and RowId.parse(str(page)) == page
    question = page.for_stage("text_qa").questions(2)[1]
    assert str(question) == "text_qa:0123abcd:p0007:q1" and RowId.parse(str(question)) == question
    window = RowId.window("windowed_qa", "0123abcd", 3, 6).questions(1)[0]
    assert str(window) == "windowed_qa:0123abcd:3-6:q0" and RowId.parse(str(window)) == window
    judged = question.judged_by("judge")
    assert str(judged) == "judge:text_qa:0123abcd:p0007:q1"
    assert RowId.parse(str(judged)) == judged and judged.judged_row == question
    document = RowId.document("whole_document_qa", "0123abcd").questions(1)[0]
    assert RowId.parse(str(document)) == document and document.unit is None
    with pytest.raises(ValueError, match="not a row id"):
        RowId.parse("no-colon")


def test_registry_is_consistent():
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names)) and [s.number for s in STAGES] == sorted(s.number for s in STAGES)
    for spec in STAGES:
        if not spec.in_workflow:
            continue  # run by its own command (evaluate): its inputs are not workflow files
        for upstream in spec.upstream:
            assert names.index(upstream) < names.index(spec.name), f"{spec.name} reads a later stage"
        if spec.is_qa:
            assert spec.unit and spec.question_types, spec.name
    assert set(qa_stages()) <= set(model_stages()) and "seed" not in model_stages()
    assert get_spec("judge").per_qa_stage and not get_spec("windowed_qa").per_qa_stage


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.workflow
def test_a_toy_stage_needs_only_its_entry_handler_and_prompt(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "workflow", copy / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "environment.yaml", copy / "environment.yaml")  # the rules' conda env
    package = copy / "workflow" / "scripts" / "longdoc_sdg"
    with open(package / "registry.py", "a", encoding="utf-8") as handle:
        handle.write(TOY_ENTRY)
    (package / "stages" / "page_count_qa.py").write_text(TOY_HANDLER)
    (package / "prompts" / "page_count_qa.j2").write_text(TOY_PROMPT)
    env = {**os.environ, "PYTHONPATH": str(copy / "workflow" / "scripts")}
    schema = subprocess.run(
        [sys.executable, "-m", "longdoc_sdg.config", "--write-schema"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert schema.returncode == 0, schema.stderr

    endpoint = {"base_url": f"http://127.0.0.1:{closed_port()}/v1", "model": "toy-model"}
    stages = {name: {"enabled": False} for name in model_stages()}
    stages["page_count_qa"] = {"model": "toy"}
    stages["judge"] = {"model": "toy"}
    config = {
        "source": {"settings": {"kind": "local", "local": {"path": str(SAMPLE_PDF_DIR)}}},
        "models": {"toy": {"endpoint": endpoint}},
        "stages": stages,
    }
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        command = ["snakemake", "--snakefile", str(copy / "workflow" / "Snakefile"), "--directory", str(workdir)]
        command += ["--configfile", str(workdir / "config.yaml"), "--cores", "1", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)

    # The shards are listed by the manifest job; the dry run then plans every per-shard job.
    manifest = snakemake("results/manifest/index.json")
    assert manifest.returncode == 0, manifest.stderr[-4000:]
    dry = snakemake("-n")
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-4000:]
    jobs = planned_jobs(dry.stdout)
    # its rule, a judge job for it (judge_stages defaults to every QA stage), its export
    assert jobs["page_count_qa"] == 1 and jobs["judge"] == 1, jobs
    assert jobs["export_dataset"] == 1 and jobs["export_reference"] == 1, jobs
    assert "results/judge/page_count_qa/00000.parquet" in dry.stdout
