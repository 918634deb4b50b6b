"""Layout (b): a Hub-ready folder — one config per QA stage, parquet shards with the page images
as image bytes (the `datasets` Image feature, struct {bytes, path}), and a README.md dataset card
whose YAML names the configs, splits, features and counts. `datasets.load_dataset(folder, stage)`
loads it as it is; `publish` uploads it.

    hub/README.md
    hub/{stage}/{split}-{i:05d}-of-{n:05d}.parquet
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import yaml

from ..config import demo_source
from ..io import get_logger, write_text_atomic
from ..registry import get_spec, qa_stages
from .common import fresh_tmp_dir, replace_dir
from .dataset import DROP_ORDER
from .layout import arrow_fields, write_layout

log = get_logger("export.hub")

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
# Leading columns, in this order, when a stage has them; the rest follow in dataset order.
LEADING = (
    "row_id",
    "doc_id",
    "images",
    "pages",
    "question_type",
    "question",
    "answer",
    "answer_format",
    "evidence_pages",
    "num_evidence_pages",
)
DROPPED = {"shard", "split", "prompt_tokens", "completion_tokens", "reasoning_tokens"}


def hub_schema(dataset: str) -> pa.Schema:
    fields = {f.name: f for f in arrow_fields(dataset) if f.name not in DROPPED}
    fields["images"] = pa.field("images", pa.list_(IMAGE_TYPE))
    fields["evidence_pages"] = pa.field("evidence_pages", pa.list_(pa.int32()))
    ordered = [fields.pop(name) for name in LEADING if name in fields]
    schema = pa.schema(ordered + list(fields.values()))
    features = {f.name: hf_feature(f.type, f.name) for f in schema}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def hf_feature(dtype: pa.DataType, name: str = "") -> dict | list:
    """The `datasets` feature (as stored in parquet metadata) of an arrow type."""
    if name == "images":
        return [{"_type": "Image"}]
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return [hf_feature(dtype.value_type)]
    return {"dtype": _dtype(dtype), "_type": "Value"}


def _dtype(dtype: pa.DataType) -> str:
    if pa.types.is_string(dtype):
        return "string"
    if pa.types.is_large_string(dtype):
        return "large_string"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_floating(dtype):
        return f"float{dtype.bit_width}"
    if pa.types.is_integer(dtype):
        return f"{'u' if pa.types.is_unsigned_integer(dtype) else ''}int{dtype.bit_width}"
    if pa.types.is_null(dtype):
        return "null"
    raise TypeError(f"no datasets dtype for arrow type {dtype}")


def card_features(schema: pa.Schema) -> list[dict]:
    """The same features in the dataset card's YAML form."""
    out = []
    for f in schema:
        if f.name == "images":
            out.append({"name": f.name, "sequence": "image"})
        elif pa.types.is_list(f.type):
            out.append({"name": f.name, "sequence": _dtype(f.type.value_type)})
        else:
            out.append({"name": f.name, "dtype": _dtype(f.type)})
    return out


_INT32_MAX = 2**31 - 1


def _evidence(row: dict) -> list[int]:
    """Evidence pages as int32s. Rows written before evidence was checked at parse time may hold
    any integer: values that are no page number (< 1 or past int32) are left out instead of
    failing the export (a failed job would cost the previous export folder)."""
    value = row.get("evidence_pages")
    if value is None:
        candidates = row.get("pages") or []
    else:
        try:
            candidates = json.loads(value)
        except (TypeError, ValueError):
            return []
    if not isinstance(candidates, list):
        return []
    return [p for p in candidates if isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= _INT32_MAX]


def write_hub(
    datasets: dict[str, str],
    summaries: dict[str, dict],
    pages_files: list[str],
    output_dir: str,
    params: dict,
    ledger_path: str | None = None,
) -> dict:
    """Write the Hub folder for the given stages' final datasets; returns the card metadata.

    params: `card` (export.settings.card), `max_file_mb`, `source` ({kind, dataset, subset}), `code_version`.
    ledger_path: the serving ledger (report/ledger.json), whose compute section the card shows.
    """
    from ..config import ExportCard

    card = ExportCard.model_validate(params.get("card") or {})
    max_bytes = int(params.get("max_file_mb", 500)) * 1024 * 1024
    tmp = fresh_tmp_dir(output_dir)
    configs: dict[str, dict] = {}
    try:
        for stage in [s for s in qa_stages() if s in datasets]:
            schema = hub_schema(datasets[stage])
            names = [f.name for f in schema]

            def make_row(row: dict, records, names=names) -> dict:
                out = {name: row.get(name) for name in names}
                out["images"] = [{"bytes": r.png, "path": f"{r.doc_id}-p{r.page_number:04d}.png"} for r in records]
                out["evidence_pages"] = _evidence(row)
                return out

            splits = write_layout(datasets[stage], pages_files, tmp / stage, schema, make_row, max_bytes)
            configs[stage] = {"schema": schema, "splits": splits}
        metadata = card_metadata(configs, summaries, card, params)
        text = render_card(metadata, configs, summaries, card, params)
        if ledger_path:
            from ..report.ledger import card_lines

            text += "\n" + "\n".join(card_lines(json.loads(Path(ledger_path).read_text(encoding="utf-8"))))
        write_text_atomic(tmp / "README.md", text)
        replace_dir(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "hub folder %s: %s", output_dir, {s: {k: v.rows for k, v in c["splits"].items()} for s, c in configs.items()}
    )
    return metadata


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
    ):
        if n < limit:
            return label
    return "n>100M"


def card_metadata(configs: dict[str, dict], summaries: dict[str, dict], card, params: dict) -> dict:
    total = sum(f.rows for c in configs.values() for f in c["splits"].values())
    meta: dict = {
        "license": card.license,
        "pretty_name": card.pretty_name,
        "language": list(card.language),
        "task_categories": ["visual-question-answering", "question-answering"],
        "tags": list(card.tags),
        "size_categories": [_size_category(total)],
    }
    source = params.get("source") or {}
    if source.get("kind") == "finepdfs" and source.get("dataset"):
        meta["source_datasets"] = [source["dataset"]]
    if params.get("demo"):
        meta["tags"] = [*meta["tags"], "demo-data"]
    meta["configs"] = []
    meta["dataset_info"] = []
    first = True
    for stage, c in configs.items():
        splits = {s: f for s, f in c["splits"].items() if f.rows > 0}
        if not splits:
            continue  # a config with no rows cannot be loaded: the card lists it as empty instead
        entry = {"config_name": stage, "data_files": [{"split": s, "path": f"{stage}/{s}-*.parquet"} for s in splits]}
        if first:
            entry["default"] = True
            first = False
        meta["configs"].append(entry)
        meta["dataset_info"].append(
            {
                "config_name": stage,
                "features": card_features(c["schema"]),
                "splits": [{"name": s, "num_bytes": f.num_bytes, "num_examples": f.rows} for s, f in splits.items()],
                "download_size": sum(f.num_bytes for f in splits.values()),
                "dataset_size": sum(f.num_bytes for f in splits.values()),
            }
        )
    return meta


def _models_line(summary: dict) -> str:
    parts = []
    for stage, models in summary.get("models", {}).items():
        parts.append(f"{stage}: {', '.join(f'`{m}`' for m in models) or '—'}")
    return "; ".join(parts)


def render_card(meta: dict, configs: dict[str, dict], summaries: dict[str, dict], card, params: dict) -> str:
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    lines = [f"---\n{header}---", "", f"# {card.pretty_name}", ""]
    if params.get("demo"):
        lines += [
            f"> **DEMO DATA.** Made by `longdoc-sdg demo`: the questions, answers and judge scores come "
            f"from {demo_source(params['demo'])}. Do not train on it or publish it as a dataset.",
            "",
        ]
    lines += [card.description, ""]
    lines += [
        "## Configurations",
        "",
        "| config | what it is | train | validation | documents (train / validation) |",
        "|---|---|---:|---:|---|",
    ]
    for stage, c in configs.items():
        s = summaries[stage]
        rows = {k: v.rows for k, v in c["splits"].items()}
        lines.append(
            f"| `{stage}` | {get_spec(stage).summary} | {rows.get('train', 0)} | {rows.get('validation', 0)} | "
            f"{s['documents']['train']} / {s['documents']['validation']} |"
        )
    total = sum(f.rows for c in configs.values() for f in c["splits"].values())
    lines += ["", f"{total} question/answer pairs in all.", ""]
    default = next((c["config_name"] for c in meta["configs"] if c.get("default")), None)
    if default:
        lines += [
            "```python",
            "from datasets import load_dataset",
            "",
            f'ds = load_dataset("<this repo or folder>", "{default}")  # one config per QA stage',
            "```",
            "",
        ]
    empty = [s for s, c in configs.items() if not any(f.rows for f in c["splits"].values())]
    if empty:
        lines += [f"Configs with no rows after filtering (not loadable): {', '.join(f'`{s}`' for s in empty)}.", ""]

    lines += ["## Models", "", "| config | models by stage |", "|---|---|"]
    for stage in configs:
        lines.append(f"| `{stage}` | {_models_line(summaries[stage])} |")

    lines += [
        "",
        "## Filters",
        "",
        "A generated row makes the dataset when it passes every filter below, checked in order; "
        "each count is the rows a filter removed that passed the filters before it.",
        "",
    ]
    applied_any = {f["name"] for stage in configs for f in summaries[stage]["filters"]}
    reasons = [r for r in DROP_ORDER if r in applied_any]
    lines.append("| config | generated | " + " | ".join(reasons) + " | kept |")
    lines.append("|---|---:|" + "---:|" * len(reasons) + "---:|")
    for stage in configs:
        s = summaries[stage]
        applied = {f["name"] for f in s["filters"]}
        cells = [str(s["dropped"].get(r, 0)) if r in applied else "n/a" for r in reasons]
        lines.append(f"| `{stage}` | {s['rows']} | " + " | ".join(cells) + f" | {s['kept']} |")
    settings = next(iter(summaries.values()))["settings"] if summaries else {}
    if settings:
        f = settings["filters"]
        lines += [
            "",
            "Settings:",
            f"- judge weighted quality score ≥ {f['min_judge_score']} (stages the judge ran on; "
            f"rows without a verdict {'dropped' if f['require_judge'] else 'kept'})",
            f"- answer format check passed: {'required' if f['require_format_ok'] else 'not required'}",
            "- independent re-answer agrees (verify_score, by answer format): "
            + (
                ", ".join(f"{k} ≥ {v:g}" for k, v in sorted(f["min_verify_score"].items()))
                if f.get("min_verify_score")
                else "not required"
            )
            + " (stages verify ran on; rows without a verdict kept)",
            f"- self-checked quality score ≥ {f['min_quality_score']} (anchored QA)",
            f"- relevance 'Relevant': {'required' if f['require_relevant'] else 'not required'}; "
            f"correctness 'Correct': {'required' if f['require_correct'] else 'not required'} (text and visual QA)",
            f"- at least min_evidence_pages evidence pages: {'required' if f['require_evidence_ok'] else 'not required'} "
            "(anchored QA; a cited page outside the pages shown already failed the row as `bad_evidence`)",
            f"- near-duplicate questions within a document: "
            f"{'removed, keeping the ' + settings['dedup']['keep'] if settings['dedup']['enabled'] else 'kept'}",
            "- a document with the bytes (sha256) of one seeded before it, in any shard: "
            f"{'all its rows removed' if settings['dedup']['documents'] else 'kept'}",
        ]
        sp = settings["split"]
        lines += [
            "",
            "## Split",
            "",
            f"By document: a document goes to validation when sha256(`{sp['seed']}`, doc_id) falls in the "
            f"first {sp['validation_fraction']:g} of the hash range (at least "
            f"{sp['min_validation_documents']} validation document(s) when the fraction is above 0), so all "
            "questions of a document, in every config, share one split.",
        ]

    lines += ["", "## Columns", ""]
    for stage, c in configs.items():
        lines.append(f"- `{stage}`: " + ", ".join(f"`{f.name}`" for f in c["schema"]))
    lines += [
        "",
        "`images` holds the pages in `pages` order (PNG); `evidence_pages` the pages the answer rests on; "
        "`answer_format` the MMLongBench-Doc answer format (Int, Float, Str, List, None) of the question type "
        "(table below; mixed types read from the answer); "
        "`weighted_quality_score` the judge's score (0-1) where the judge ran.",
        "",
        *_format_table(),
        "",
    ]
    mix = params.get("mix")
    if mix:
        what = {
            "reference": "the reference recipe's question-type weights",
            "benchmark": "weights derived from MMLongBench-Doc's answer-format and evidence-source mix "
            "(Int 27.6%, Str 23.1%, None 20.6%, Float 14.7%, List 14.0%)",
            "custom": "question-type weights set in this run's configuration",
        }[mix["target"]]
        lines += ["## Question-type mix", "", f"Target `{mix['target']}`: {what}. Weights per config:", ""]
        for stage, weights in mix.get("weights", {}).items():
            total = sum(weights.values()) or 1.0
            shares = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in weights.items() if v)
            lines.append(f"- `{stage}`: {shares}")
        lines += ["", "The report's answer-format figure sets the generated mix against the benchmark's.", ""]
    source = params.get("source") or {}
    lines += [
        "## Source",
        "",
        f"Documents from source kind `{source.get('kind', '?')}`"
        + (f" (`{source['dataset']}`, subset `{source.get('subset')}`)" if source.get("kind") == "finepdfs" else "")
        + f"; made with longdoc-sdg {params.get('code_version', '')}.",
        "",
        "## Licence",
        "",
        f"`{card.license}`. Check the licences of the source documents and the terms of "
        "the models listed above before use.",
        "",
    ]
    return "\n".join(lines)


def _format_table() -> list[str]:
    """Our question types next to the benchmark answer formats they are scored by."""
    from ..taxonomy import QUESTION_TYPE_FORMATS

    lines = ["| question type | MMLongBench-Doc format |", "|---|---|"]
    for key, fmt in QUESTION_TYPE_FORMATS.items():
        lines.append(f"| `{key}` | {fmt or 'read from the answer'} |")
    return lines
