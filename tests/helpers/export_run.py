"""Helpers for the export and report tests (no tests here).

- `SyntheticRun`: a small but complete results folder (manifest, seed tables with real PNGs, every
  stage's shards following the stages' output schemas, judge shards) whose rows are chosen so each
  export filter, the near-duplicate removal and the split have something to do.
- `ExportFakeServer`: the project's fake OpenAI server, with replies shaped for the QA stages
  (tagged anchored-QA items answering in their question type's format, mostly positive verdicts,
  mostly good rubric scores) so an end-to-end run exports rows from every QA stage.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from longdoc_sdg.rowstore import output_schema
from longdoc_sdg.seed.shard import PAGES_SCHEMA
from longdoc_sdg.stages import get_stage
from longdoc_sdg.stages.base import arrow_schema
from longdoc_sdg.taxonomy import ANCHORED_TYPES, JUDGE_RUBRIC
from longdoc_sdg.testing.fake_openai_server import FakeOpenAIServer

PAGE_SCHEMA = PAGES_SCHEMA  # the seed's own pages table layout


def png_bytes(doc_index: int, page: int) -> bytes:
    """A small PNG unique to (document, page)."""
    image = Image.new("RGB", (24, 32), ((doc_index * 60) % 256, (page * 40) % 256, 120))
    image.putpixel((page % 24, doc_index % 32), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _default(dtype: pa.DataType):
    if pa.types.is_string(dtype):
        return "x"
    if pa.types.is_boolean(dtype):
        return True
    if pa.types.is_integer(dtype):
        return 0
    if pa.types.is_floating(dtype):
        return 0.0
    if pa.types.is_list(dtype):
        return []
    return None


def stage_schema(stage: str) -> pa.Schema:
    return output_schema(arrow_schema(get_stage(stage).output_model))


def make_row(stage: str, row_id: str, doc_id: str, pages: list[int], status: str = "ok", **values) -> dict:
    """A full output row of `stage`: common columns, then defaults for every generated column."""
    schema = stage_schema(stage)
    row = {f.name: _default(f.type) for f in schema}
    row.update(
        row_id=row_id,
        doc_id=doc_id,
        pages=pages,
        status=status,
        failure_reason=None,
        failure_message=None,
        model="gen-model",
        prompt_tokens=100,
        completion_tokens=40,
        reasoning_tokens=10,
    )
    if stage == "judge":
        row["model"] = "judge-model"
    row.update(values)
    if status != "ok":
        generated = {f.name for f in schema} - {
            "row_id",
            "doc_id",
            "pages",
            "status",
            "failure_reason",
            "failure_message",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "reasoning_tokens",
        }
        row.update({name: None for name in generated})
        row["failure_reason"] = values.get("failure_reason", "length")
        row["failure_message"] = "synthetic failure"
    return row


def write_rows(path: Path, stage: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=stage_schema(stage)), path)


def judge_row(qa_row: dict, qa_stage: str, score: float | None, status: str = "ok") -> dict:
    """A judge row for a QA row whose rubric scores give (about) `score`."""
    row_id = f"judge:{qa_row['row_id']}"
    if status != "ok" or score is None:
        return make_row(
            "judge", row_id, qa_row["doc_id"], qa_row["pages"], status="failed", failure_reason="schema_invalid"
        )
    level = max(0, min(5, round(score * 5)))
    scores = {item.key: level for item in JUDGE_RUBRIC}
    details = {k: {"score": v, "reason": "synthetic"} for k, v in scores.items()}
    return make_row(
        "judge",
        row_id,
        qa_row["doc_id"],
        qa_row["pages"],
        qa_row_id=qa_row["row_id"],
        qa_stage=qa_stage,
        question_type=qa_row.get("question_type") or "string",
        qa_quality_judge=json.dumps(details),
        weighted_quality_score=float(score),
        **{f"{k}_score": v for k, v in scores.items()},
    )


class SyntheticRun:
    """results/ with 2 shards x 2 documents x 4 pages, and rows for every stage.

    single_page_qa, document d0 (shard 0), in this order, are built to hit each filter once: a
    question and its near-duplicate (the second has the better judge score), failed, judge score
    too low, no judge verdict, bad format, quality 0, bad evidence. The same question appears in
    d1-d3: kept there. Judge rows carry the given weighted score (rubric scores ~ score x 5).
    """

    DOCS = {"00000": ["d0", "d1"], "00001": ["d2", "d3"]}
    PAGES = 4

    def __init__(self, root: Path):
        self.root = Path(root)
        self.results = self.root / "results"
        self.expected_drops: dict[str, int] = {}
        self.build()

    # -- seed

    def build(self) -> None:
        for shard, docs in self.DOCS.items():
            self._seed(shard, docs)
            self._stages(shard, docs)

    def doc_index(self, doc_id: str) -> int:
        return int(doc_id[1:])

    def _seed(self, shard: str, docs: list[str]) -> None:
        seed = self.results / "seed" / shard
        seed.mkdir(parents=True, exist_ok=True)
        manifest = [
            {
                "doc_id": d,
                "source_kind": "urls",
                "source": f"https://example.org/{d}.pdf",
                "url": f"https://example.org/{d}.pdf",
                "date": "2024-01-01",
                "extra": json.dumps({"id": f"<urn:uuid:{d}>"}),
            }
            for d in docs
        ]
        if shard == "00001":
            manifest.append(
                {
                    "doc_id": "dead",
                    "source_kind": "urls",
                    "source": "https://example.org/dead.pdf",
                    "url": "https://example.org/dead.pdf",
                    "date": None,
                    "extra": "{}",
                }
            )
        (self.results / "manifest").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(manifest), self.results / "manifest" / f"{shard}.parquet")
        with pq.ParquetWriter(seed / "pages.parquet", PAGE_SCHEMA) as writer:
            for d in docs:
                rows = [
                    {
                        "doc_id": d,
                        "page_number": p,
                        "png": png_bytes(self.doc_index(d), p),
                        "width": 24,
                        "height": 32,
                        "dpi": 10.0,
                        "is_gray": False,
                        "page_width_pt": 612.0,
                        "page_height_pt": 792.0,
                        "pdf_text": f"text of {d} page {p}",
                        "text_blocks": "[]",
                    }
                    for p in range(1, self.PAGES + 1)
                ]
                writer.write_table(pa.Table.from_pylist(rows, schema=PAGE_SCHEMA))
        pq.write_table(
            pa.Table.from_pylist(
                [
                    {
                        "doc_id": d,
                        "source_kind": "urls",
                        "source": f"https://example.org/{d}.pdf",
                        "url": f"https://example.org/{d}.pdf",
                        "date": "2024-01-01",
                        "total_pages": self.PAGES,
                        "extra": json.dumps({"id": f"<urn:uuid:{d}>"}),
                    }
                    for d in docs
                ]
            ),
            seed / "documents.parquet",
        )
        failures = (
            [{"doc_id": "dead", "source": "https://example.org/dead.pdf", "reason": "http_error", "message": "404"}]
            if shard == "00001"
            else []
        )
        pq.write_table(
            pa.Table.from_pylist(
                failures,
                schema=pa.schema(
                    [
                        ("doc_id", pa.string()),
                        ("source", pa.string()),
                        ("reason", pa.string()),
                        ("message", pa.string()),
                    ]
                ),
            ),
            seed / "failures.parquet",
        )

    # -- stages

    def _stages(self, shard: str, docs: list[str]) -> None:
        r = self.results
        ocr, classify = [], []
        for d in docs:
            for p in range(1, self.PAGES + 1):
                ocr.append(
                    make_row(
                        "ocr",
                        f"ocr:{d}:p{p:04d}",
                        d,
                        [p],
                        model="pdf-text",
                        prompt_tokens=0,
                        completion_tokens=0,
                        reasoning_tokens=0,
                        ocr_engine="pdf-text",
                        transcribed_texts=f"text of {d} page {p}",
                        num_elements=1,
                        transcribed_texts__metadata="[]",
                    )
                )
                cats = ["TABULAR", "QUANTITATIVE"] if p == 1 else ["NONE"] if p > 2 else ["INFOGRAPHIC"]
                classify.append(
                    make_row(
                        "classify",
                        f"classify:{d}:p{p:04d}",
                        d,
                        [p],
                        model="cls-model",
                        page_classification=json.dumps(
                            {
                                "contains_reasoning_content": cats != ["NONE"],
                                "primary_categories": cats,
                                "subcategories": [],
                                "reasoning_complexity_score": 3,
                                "justification": "synthetic",
                            }
                        ),
                        contains_reasoning_content=cats != ["NONE"],
                        primary_categories=json.dumps(cats),
                        reasoning_complexity_score=3,
                    )
                )
        write_rows(r / "ocr" / f"{shard}.parquet", "ocr", ocr)
        write_rows(r / "classify" / f"{shard}.parquet", "classify", classify)

        single: list[dict] = []
        judge: dict[str, list[dict]] = {
            s: [] for s in ("single_page_qa", "text_qa", "visual_qa", "windowed_qa", "whole_document_qa")
        }

        def anchored(stage, d, pages, k, question, answer, qtype="numerical_int", **kw):
            values = {
                "question_type": qtype,
                "question": question,
                "answer": answer,
                "reasoning": "because",
                "evidence_pages": json.dumps(pages[:2]),
                "evidence_ok": True,
                "quality_score": 1,
                "format_ok": True,
                "format_reason": "ok",
                **kw,
            }
            return make_row(stage, f"{stage}:{d}:p{pages[0]:04d}:q{k}", d, pages, **values)

        for d in docs:
            if d == "d0":
                rows = [
                    (anchored("single_page_qa", d, [1], 0, "What is the total revenue in 2020?", "42"), 0.8),
                    (anchored("single_page_qa", d, [2], 0, "what is the TOTAL revenue, in 2020", "41"), 0.9),
                    (make_row("single_page_qa", f"single_page_qa:{d}:p0003:q0", d, [3], status="failed"), None),
                    (anchored("single_page_qa", d, [4], 0, "How many rows does Table 2 list?", "7"), 0.2),
                    (
                        anchored(
                            "single_page_qa", d, [1], 1, "Which year had the lowest cost?", "2019", qtype="string"
                        ),
                        "missing",
                    ),
                    (
                        anchored(
                            "single_page_qa",
                            d,
                            [2],
                            1,
                            "What share of staff are remote?",
                            "12 percent",
                            qtype="numerical_percentage",
                            format_ok=False,
                            format_reason="expected_percentage",
                        ),
                        0.9,
                    ),
                    (
                        anchored(
                            "single_page_qa",
                            d,
                            [3],
                            1,
                            "Is the chart on page 3 rising?",
                            "Yes",
                            qtype="yes_no",
                            quality_score=0,
                        ),
                        0.9,
                    ),
                    (
                        anchored(
                            "single_page_qa",
                            d,
                            [4],
                            1,
                            "List the columns of Table 4.",
                            '["a", "b"]',
                            qtype="list",
                            evidence_ok=False,
                        ),
                        0.9,
                    ),
                ]
                self.expected_drops["single_page_qa"] = {
                    "duplicate": 1,
                    "failed": 1,
                    "judge_score": 1,
                    "judge_missing": 1,
                    "format": 1,
                    "quality_score": 1,
                    "evidence": 1,
                }
            else:
                i = self.doc_index(d)
                rows = [
                    (anchored("single_page_qa", d, [1], 0, "What is the total revenue in 2020?", "42"), 0.9),
                    (
                        anchored(
                            "single_page_qa",
                            d,
                            [2],
                            0,
                            f"What is the growth rate of unit {i}?",
                            "3.5",
                            qtype="numerical_float",
                        ),
                        0.8,
                    ),
                    (
                        anchored(
                            "single_page_qa",
                            d,
                            [3],
                            0,
                            f"Which region does figure {i} omit?",
                            "Not answerable",
                            qtype="not_answerable",
                        ),
                        0.7,
                    ),
                ]
            for row, score in rows:
                single.append(row)
                if row["status"] == "ok":
                    judge["single_page_qa"].append(
                        judge_row(row, "single_page_qa", None if score == "missing" else score)
                    )
                elif score is None:
                    pass  # failed QA rows are not judged
        write_rows(r / "single_page_qa" / f"{shard}.parquet", "single_page_qa", single)

        text, visual, windowed, whole = [], [], [], []
        for d in docs:
            for p in (1, 2):
                relevance = "Irrelevant" if (d, p) == ("d0", 2) else "Relevant"
                correctness = "Incorrect" if (d, p) == ("d1", 2) else "Correct"
                q = f"What does section {p} of {d} define?"
                text.append(
                    make_row(
                        "text_qa",
                        f"text_qa:{d}:p{p:04d}:q0",
                        d,
                        [p],
                        question_type="short_answer",
                        question_and_answer=json.dumps({"question": q, "answer": "a term"}),
                        question=q,
                        answer="a term",
                        question_relevance=relevance,
                        question_relevance_reason="r",
                        answer_correctness=correctness,
                        answer_correctness_reason="r",
                        format_ok=True,
                        format_reason="ok",
                    )
                )
                visual.append(
                    make_row(
                        "visual_qa",
                        f"visual_qa:{d}:p{p:04d}:q0",
                        d,
                        [p],
                        model="vis-model",
                        question_type="short",
                        question=f"By how much did sales grow on chart {p}?",
                        answer=f"{p * 10}%",
                        reasoning="r",
                        question_relevance="Relevant",
                        question_relevance_reason="r",
                        answer_correctness="Correct",
                        answer_correctness_reason="r",
                        page_categories='["QUANTITATIVE"]',
                        format_ok=True,
                        format_reason="ok",
                    )
                )
            for s in (1, 3):
                windowed.append(
                    anchored("windowed_qa", d, [s, s + 1], 0, f"What is the sum over pages {s}-{s + 1}?", str(s * 11))
                )
            whole.append(
                make_row(
                    "whole_document_qa",
                    f"whole_document_qa:{d}:q0",
                    d,
                    list(range(1, self.PAGES + 1)),
                    question_type="list",
                    question=f"Which tables appear in {d}?",
                    answer='["T1", "T2", "T3"]',
                    reasoning="r",
                    evidence_pages="[1, 2, 4]",
                    evidence_ok=True,
                    quality_score=2,
                    format_ok=True,
                    format_reason="ok",
                )
            )
        for stage, rows in (
            ("text_qa", text),
            ("visual_qa", visual),
            ("windowed_qa", windowed),
            ("whole_document_qa", whole),
        ):
            write_rows(r / stage / f"{shard}.parquet", stage, rows)
            judge[stage] = [judge_row(row, stage, 0.8) for row in rows if row["status"] == "ok"]
        for stage, rows in judge.items():
            write_rows(r / "judge" / stage / f"{shard}.parquet", "judge", rows)

    # -- inputs as the workflow passes them

    @property
    def shards(self) -> list[str]:
        return list(self.DOCS)

    def files(self, stage: str) -> list[str]:
        return [str(self.results / stage / f"{s}.parquet") for s in self.shards]

    def seed_files(self, table: str) -> list[str]:
        return [str(self.results / "seed" / s / f"{table}.parquet") for s in self.shards]

    def dataset_inputs(self, stage: str, judged: bool = True) -> dict[str, list[str]]:
        inputs = {"qa": self.files(stage), "documents": self.seed_files("documents")}
        if judged:
            inputs["judge"] = self.files(f"judge/{stage}")
        up = {"text_qa": "ocr", "visual_qa": "classify"}.get(stage)
        if up:
            inputs["upstream"] = self.files(up)
        return inputs


# ---------------------------------------------------------------------------------------------
# A fake server whose replies suit the QA stages.


def _answer_for(fmt: str, rng: random.Random) -> str:
    return {
        "multiple_choice": f"{rng.choice('ABCD')}. option",
        "yes_no": rng.choice(["Yes", "No"]),
        "true_false": rng.choice(["True", "False"]),
        "int": str(rng.randint(1, 99)),
        "float": f"{rng.randint(1, 99)}.{rng.randint(1, 9)}",
        "percent": f"{rng.randint(1, 99)}%",
        "number": str(rng.randint(1, 99)),
        "list": json.dumps(rng.sample(["alpha", "beta", "gamma", "delta"], 2)),
        "short_text": rng.choice(["the north region", "Table 3", "annual report"]),
        "not_answerable": "Not answerable",
    }[fmt]


class ExportFakeServer(FakeOpenAIServer):
    """TEST DOUBLE with replies shaped for the QA stages (see the module doc)."""

    def _completion(self, req: dict, key: str, fault):
        payload = super()._completion(req, key, fault)
        if fault is not None:
            return payload
        rng = random.Random(key)
        text = json.dumps(req["messages"])
        message = payload["choices"][0]["message"]
        fmt = req.get("response_format") or {}
        if "response_format" not in req and "<quality_score>" in text:
            qtype = next((t for t in ANCHORED_TYPES if json.dumps(t.format_hint)[1:-1] in text), None)
            answer_format = qtype.answer_format.value if qtype else "short_text"
            if rng.random() < 0.1:
                answer_format = "short_text"  # now and then an answer in the wrong format
            pages = [int(p) for p in re.findall(r"Page (\d+):", text)]
            if not pages:
                match = re.search(r"page (\d+) of a", text)
                pages = [int(match.group(1))] if match else [1]
            evidence = pages[: 2 if len(pages) > 1 else 1]
            # few distinct questions per document: near-duplicates for the export to remove
            question = f"What is the value in row {rng.randint(1, 4)} of Table 1?"
            message["content"] = (
                f"<question>\n{question}\n</question>\n<answer>{_answer_for(answer_format, rng)}</answer>\n"
                f"<evidence_pages>{json.dumps(evidence)}</evidence_pages>\n"
                f"<quality_score>{rng.choice([1, 1, 1, 2, 0])}</quality_score>"
            )
        elif fmt.get("type") == "json_schema" and message.get("content"):
            data = json.loads(message["content"])
            if isinstance(data, dict) and data.get("verdict") in ("Relevant", "Irrelevant"):
                data["verdict"] = "Relevant" if rng.random() < 0.85 else "Irrelevant"
            elif isinstance(data, dict) and data.get("verdict") in ("Correct", "Incorrect"):
                data["verdict"] = "Correct" if rng.random() < 0.85 else "Incorrect"
            elif isinstance(data, dict) and all(item.key in data for item in JUDGE_RUBRIC):
                for item in JUDGE_RUBRIC:
                    data[item.key]["score"] = rng.choice([2, 3, 4, 4, 5, 5])
            message["content"] = json.dumps(data)
        return payload


# ---------------------------------------------------------------------------------------------
# Loading the Hub folder with `datasets`, offline, in a clean process.

_LOAD_SCRIPT = r"""
import hashlib, json, sys
import datasets
folder, cache, configs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
assert datasets.config.HF_DATASETS_OFFLINE, "not offline"
out = {}
for name in configs:
    ds = datasets.load_dataset(folder, name, cache_dir=cache)
    out[name] = {}
    for split in ds:
        part = ds[split]
        feature = part.features["images"]
        raw = part.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
        first = part[0]["images"][0]
        out[name][split] = {
            "num_rows": part.num_rows,
            "image_feature": type(getattr(feature, "feature", feature)).__name__,
            "first_image": [type(first).__module__, list(first.size)],
            "rows": [{"row_id": r["row_id"], "doc_id": r["doc_id"], "pages": r["pages"],
                      "evidence_pages": r["evidence_pages"], "answer_format": r["answer_format"],
                      "images": [hashlib.sha256(i["bytes"]).hexdigest() for i in r["images"]]} for r in raw],
        }
print(json.dumps(out))
"""


def load_hub_offline(folder: Path, configs: list[str], cache: Path) -> dict:
    """`datasets.load_dataset(folder, config)` for each config in a subprocess with
    HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1; returns per config and split the row count, the
    image feature type, the first decoded image and every row's image hashes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(folder), str(cache / "ds"), json.dumps(configs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"load_dataset failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def reference_rows(folder: Path) -> list[dict]:
    """A reference-layout folder's rows, each joined with its traceability row (same order)."""
    out = []
    splits = json.loads((folder / "export.json").read_text())["splits"]
    for split in ("train", "validation"):
        files = sorted(folder / name for name in splits.get(split, {}).get("files", []))
        if not files:
            continue
        data = [r for f in files for r in pq.read_table(f).to_pylist()]
        trace = pq.read_table(folder / "traceability" / f"{split}.parquet").to_pylist()
        assert len(data) == len(trace)
        out += [{**row, "trace": t} for row, t in zip(data, trace)]
    return out
