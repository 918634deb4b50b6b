"""Evaluate a served model on a benchmark in MMLongBench-Doc's layout, end to end.

`samples` is the benchmark's `samples.json`; `documents` the folder of its PDFs (named by the
samples' `doc_id`). The PDFs are seeded with the seed stage's code, every question is answered by
the `evaluate` stage (stages/evaluate.py: pages shown, page-selection rule, extraction) through
the same engine, journal and row accounting as every stage, and the answers are scored in both
modes. Written under `out_dir`:

    results.json        the benchmark's result layout: samples.json fields + response,
                        extracted_res, pred and score (official mode); `longdoc-sdg score
                        results.json` re-scores it to scores.json's `official` part
    scores.json         {"official": aggregates, "fixed": aggregates, "samples", "answered", "failed"}
    failures.jsonl      samples that could not be answered (no PDF, request failures), with the reason
    report.html         both modes' aggregates as tables
    seed/, answers.parquet, .journal/   the seeded pages and the stage's rows (resumable)
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .ids import stable_id
from .io import get_logger, write_parquet_atomic, write_text_atomic
from .registry import SEED_TABLES
from .score import SAMPLE_FIELDS, aggregate, check_rows, score_rows
from .stages.evaluate import DEFAULT_MAX_IMAGES, read_samples

log = get_logger("evaluate")


def check_samples(samples: list, source: str) -> None:
    """Every sample needs the samples.json fields and a known answer_format (errors name the row)."""
    check_rows(samples, source, SAMPLE_FIELDS)


def pages_per_question(requested: int | None, limit: int | None, key: str = "max_images") -> int:
    """Pages shown per question: `requested`, else the deployment's image limit
    (serve.image_limit: its --limit-mm-per-prompt), else DEFAULT_MAX_IMAGES; never more than
    the deployment accepts (such requests would all be refused)."""
    if limit == 0:
        raise ValueError("the deployment accepts no images (--limit-mm-per-prompt image 0): serve a vision model")
    if requested is None:
        return limit if limit is not None else DEFAULT_MAX_IMAGES
    if limit is not None and requested > limit:
        raise ValueError(
            f"{key} is {requested}, but the deployment accepts at most {limit} image(s) per request "
            f"(--limit-mm-per-prompt); set {key} to at most {limit}, or leave it unset to use the limit"
        )
    return requested


def write_manifest(samples: list[dict], documents_dir: str, path: Path) -> list[str]:
    """One manifest row per PDF the samples name that exists; returns the names not found."""
    from .manifest import MANIFEST_SCHEMA

    folder = Path(documents_dir)
    rows, missing = [], []
    for name in dict.fromkeys(str(s["doc_id"]) for s in samples):
        pdf = folder / name
        if not pdf.is_file():
            missing.append(name)
            continue
        rows.append(
            {
                "doc_id": stable_id("evaluate", name),
                "source_kind": "local",
                "source": str(pdf.resolve()),
                "url": None,
                "date": None,
                "extra": json.dumps({"benchmark_doc_id": name}),
            }
        )
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return missing


def run_evaluation(
    samples_path: str,
    documents_dir: str,
    out_dir: str,
    endpoint: dict,
    params: dict | None = None,
    seed_params: dict | None = None,
    threads: int = 1,
) -> dict:
    """Seed, answer, score; returns scores.json's content."""
    from .seed import run_seed_shard
    from .stages import run_stage

    out = Path(out_dir)
    samples = read_samples(samples_path)
    check_samples(samples, samples_path)
    missing = write_manifest(samples, documents_dir, out / "manifest.parquet")
    if missing:
        log.warning("evaluate: %d document(s) not in %s: %s", len(missing), documents_dir, ", ".join(missing[:10]))
    seed = {t: str(out / "seed" / f"{t}.parquet") for t in SEED_TABLES}
    # The seed is kept for a rerun (resume) only when it was made from the same PDFs and settings.
    seeded_from = json.dumps(
        {"pdfs": pq.read_table(out / "manifest.parquet").column("source").to_pylist(), "seed": seed_params or {}},
        sort_keys=True,
    )
    record = out / "seed" / "seeded-from.json"
    answers, journal = out / "answers.parquet", out / ".journal" / "evaluate.jsonl"
    if not (all(Path(p).exists() for p in seed.values()) and record.is_file() and record.read_text() == seeded_from):
        run_seed_shard(str(out / "manifest.parquet"), seed, seed_params or {}, threads)
        write_text_atomic(record, seeded_from)
        # Answers given on other pages are not resumed.
        answers.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
    run_stage(
        "evaluate",
        {"samples": samples_path, "documents": seed["documents"], "pages": seed["pages"]},
        str(answers),
        params or {},
        endpoint,
        threads,
        str(journal),
    )
    return write_outputs(samples, str(answers), out)


def write_outputs(samples: list[dict], answers_path: str, out: Path) -> dict:
    """The benchmark's result layout, both modes' aggregates, the failures and the report page."""
    rows = pq.read_table(answers_path).to_pylist()
    results, failures = [], []
    for row in sorted(rows, key=lambda r: r["row_id"]):
        index = int(row["row_id"].rsplit(":", 1)[1])
        sample = samples[index]
        if row["status"] != "ok":
            failures.append(
                {
                    "sample_index": index,
                    "doc_id": sample["doc_id"],
                    "question": sample["question"],
                    "reason": row["failure_reason"],
                    "message": row["failure_message"],
                }
            )
            continue
        results.append(
            {**sample, "response": row["response"], "extracted_res": row["extracted_res"], "pred": row["pred"]}
        )
    scores: dict = {"samples": len(samples), "answered": len(results), "failed": len(failures)}
    if results:
        checked = check_rows(results, "evaluate results")
        for mode in ("official", "fixed"):
            scored = score_rows(checked, mode)
            scores[mode] = aggregate(scored)
            if mode == "official":
                for result, row in zip(results, scored):
                    result["score"], result["score_error"] = row["score"], row["score_error"]
    write_text_atomic(out / "results.json", json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    write_text_atomic(out / "failures.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures))
    write_text_atomic(out / "scores.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out / "report.html", report_html(scores))
    return scores


def report_html(scores: dict) -> str:
    def table(title: str, groups: dict) -> str:
        body = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{g['accuracy']:.3f}</td><td>{g['n']}</td></tr>"
            for name, g in groups.items()
        )
        return f"<h4>{html.escape(title)}</h4><table><tr><th></th><th>accuracy</th><th>n</th></tr>{body}</table>"

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>longdoc-sdg evaluation</title>",
        "<style>body{font-family:sans-serif;font-size:14px;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}</style>",
        "</head><body><h2>Evaluation (MMLongBench-Doc rules)</h2>",
        f"<p>{scores['samples']} samples: {scores['answered']} answered, {scores['failed']} failed "
        "(see failures.jsonl).</p>",
    ]
    for mode in ("official", "fixed"):
        agg = scores.get(mode)
        if not agg:
            continue
        overall = agg["overall"]
        parts += [
            f"<h3>{mode} scoring</h3>",
            f"<p>accuracy <b>{overall['accuracy']:.3f}</b>, F1 <b>{overall['f1']:.3f}</b>, n {overall['n']}, "
            f"rows the official code would crash on: {agg['errors']}</p>",
            table("Evidence pages", {k: agg[k] for k in ("single_page", "cross_page", "unanswerable")}),
            table("Evidence sources", agg["evidence_sources"]),
            table("Document types", agg["doc_types"]),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# `longdoc-sdg evaluate`.


def add_arguments(parser) -> None:
    parser.description = (
        "Score a served model on a benchmark in MMLongBench-Doc's layout: seed the PDFs, ask every question "
        "with its document's pages, extract and score the answers (official and fixed modes)."
    )
    parser.add_argument("--samples", required=True, help="the benchmark's samples.json")
    parser.add_argument("--documents", required=True, help="folder of the benchmark's PDFs (named by doc_id)")
    parser.add_argument("--out", required=True, help="output folder (results.json, scores.json, report.html, ...)")
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--api-key-env", help="NAME of the environment variable holding the API key")
    parser.add_argument(
        "--max-images",
        type=int,
        help="pages shown per question (the first N); default: the --deployment's image limit, else 50",
    )
    parser.add_argument(
        "--deployment",
        help="the served model's deployment file (config/deployments/NAME.yaml): its --limit-mm-per-prompt "
        "caps the pages shown",
    )
    parser.add_argument("--dpi", type=float, help="page rendering resolution (the seed's dpi setting)")
    parser.add_argument("--threads", type=int, default=1, help="seed workers")


def run_command(args) -> int:
    import sys

    from .score import InputError

    endpoint = {"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env}
    seed_params = {"dpi": args.dpi} if args.dpi else {}
    try:
        limit = None
        if args.deployment:
            from .serve import image_limit, load_deployment

            limit = image_limit(load_deployment(args.deployment))
        params = {"max_images": pages_per_question(args.max_images, limit, "--max-images")}
        scores = run_evaluation(args.samples, args.documents, args.out, endpoint, params, seed_params, args.threads)
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2, ensure_ascii=False))
    return 0


# ---------------------------------------------------------------------------------------------
# The workflow's `evaluate` target (workflow/rules/evaluate.smk): the same run, its model named
# by an alias of `models:` (evaluate.model), served or reached like every stage's.

SECTION = "evaluate"


def workflow_paths(config: dict) -> tuple[str, str]:
    """evaluate.settings.samples and .documents, or an error saying what to set."""
    settings = config[SECTION]["settings"]
    for key in ("samples", "documents"):
        if not settings.get(key):
            raise ValueError(
                f"`snakemake evaluate` needs evaluate.settings.{key} (the benchmark's samples.json and the folder "
                "of its PDFs): set both in a --configfile"
            )
    if not Path(settings["samples"]).is_file():
        raise ValueError(f"evaluate.settings.samples: no file {settings['samples']}")
    if not Path(settings["documents"]).is_dir():
        raise ValueError(f"evaluate.settings.documents: no folder {settings['documents']}")
    return settings["samples"], settings["documents"]


def workflow_inputs(config: dict) -> dict:
    """The rule's inputs: samples.json and the PDFs it names that exist (the others become
    failure rows). Bad samples fail here, before anything runs, naming the row and field."""
    samples_path, documents = workflow_paths(config)
    samples = read_samples(samples_path)
    check_samples(samples, samples_path)
    names = dict.fromkeys(str(s["doc_id"]) for s in samples)
    return {
        "samples": samples_path,
        "pdfs": [str(Path(documents) / n) for n in names if (Path(documents) / n).is_file()],
    }


def unavailable_reason(config: dict) -> str:
    alias = config[SECTION]["model"]
    if alias is None:
        return "`snakemake evaluate` needs a model: set evaluate.model to an alias of `models:`"
    if alias not in config["models"]:
        return f"evaluate.model is {alias!r}, not an alias of `models:` ({', '.join(sorted(config['models']))})"
    if config["models"][alias].get("deployment"):
        return (
            f"evaluate.model {alias!r} is deployment {config['models'][alias]['deployment']!r}: set "
            f"serving.enabled: true to serve it, or point models.{alias} at a running endpoint"
        )
    return f"evaluate.model {alias!r}: set models.{alias}.endpoint.base_url (+ model, api_key_env)"


def workflow_image_limit(config: dict) -> int | None:
    """The image limit of evaluate.model's deployment (None for an endpoint)."""
    from .endpoints import load_deployment_of
    from .plan import stage_deployment
    from .serve import image_limit

    deployment = stage_deployment(config, SECTION)
    return image_limit(load_deployment_of(config, deployment)) if deployment else None


def workflow_settings(config: dict) -> dict:
    """What changes the evaluation's results (the rule's params): the answering settings, with
    max_images resolved against the deployment's image limit, and the seed's settings."""
    settings = {k: v for k, v in config[SECTION]["settings"].items() if k not in ("samples", "documents")}
    settings["max_images"] = pages_per_question(
        settings.get("max_images"), workflow_image_limit(config), "evaluate.settings.max_images"
    )
    return {"settings": settings, "seed": config["seed"]["settings"]}
