"""`longdoc-sdg score FILE [--mode official|fixed] [--json OUT]`."""

from __future__ import annotations

import argparse
import json
import sys

from .results import InputError, aggregate, check_rows, read_rows, rows_path, score_rows, write_outputs
from .rules import MODES

DESCRIPTION = """Score predictions by MMLongBench-Doc's rules.

FILE is a JSON list or JSON Lines in the benchmark's result layout: the samples.json fields
(doc_id, doc_type, question, answer, evidence_pages, evidence_sources, answer_format) plus pred,
the extracted answer. Prints the aggregates as JSON: overall {accuracy, f1, n}, single_page,
cross_page, unanswerable {accuracy, n}, evidence_sources and doc_types {NAME: {accuracy, n}},
errors (rows the official code would crash on; left out of every n)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", metavar="FILE", help="predictions: JSON list or JSON Lines")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="official",
        help="official: the benchmark's evaluation, quirks included (default); "
        "fixed: known defects repaired (see longdoc_sdg.score)",
    )
    parser.add_argument(
        "--json",
        metavar="OUT",
        dest="json_out",
        help="also write the aggregates to OUT and every row with its score to "
        "OUT.rows.jsonl (OUT's .json suffix replaced), in input order",
    )


def run_command(args: argparse.Namespace) -> int:
    try:
        originals = read_rows(args.file)
        rows = check_rows(originals, args.file)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    scored = score_rows(rows, args.mode)
    aggregates = aggregate(scored)
    if args.json_out:
        write_outputs(args.json_out, scored, aggregates, originals)
    print(json.dumps(aggregates, indent=2, ensure_ascii=False))
    if aggregates["errors"]:
        print(
            f"{aggregates['errors']} row(s) could not be scored in {args.mode} mode (score null, "
            f"reason in score_error{' of ' + str(rows_path(args.json_out)) if args.json_out else ''})",
            file=sys.stderr,
        )
    return 0
