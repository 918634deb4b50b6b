"""`longdoc-sdg` command line: subcommands share one argparse parser (room for more, e.g. serve).

    longdoc-sdg stage NAME --config RUN.yaml [key=value ...]
    longdoc-sdg stage NAME --help          # the stage's settings: name, type, default, description
    longdoc-sdg stage --help               # the stages

RUN.yaml says what to run on and with which settings:

    inputs: {pages: results/seed/00000/pages.parquet}
    output: out/single_page_qa/00000.parquet
    endpoint: {base_url: http://localhost:8000/v1, model: my-model, api_key_env: MY_KEY}
    params: {num_records: 10, sampling: {temperature: 0.7}}

Overrides use dotted keys and YAML values: `num_records=5` and `sampling.top_k=20` set params;
`inputs.pages=...`, `output=...`, `endpoint.model=...`, `journal=...` set the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

RUN_FILE_HELP = """RUN.yaml:
    inputs: {pages: results/seed/00000/pages.parquet}     # the stage's input keys
    output: out/single_page_qa/00000.parquet
    endpoint: {base_url: http://localhost:8000/v1, model: my-model, api_key_env: MY_KEY}
    params: {num_records: 10, sampling: {temperature: 0.7}}
    journal: out/.journal/00000.jsonl                     # optional (resume file)

key=value overrides: dotted keys, YAML values; keys outside inputs/output/endpoint/journal/threads
are settings (params), e.g. num_records=5 sampling.top_k=20 question_type_weights.layout=0"""

RUN_KEYS = ("inputs", "output", "endpoint", "params", "journal", "threads")

# Subcommands: name -> (help, add_arguments(parser), handler(args) -> exit code). Other modules
# add theirs with `register` (e.g. serve, manifest).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def register(
    name: str,
    help_text: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    SUBCOMMANDS[name] = (help_text, add_arguments, handler)


# ---------------------------------------------------------------------------------------------
# Field tables.


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _default(info) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()
    return "(required)"


def field_rows(
    model: type[BaseModel], prefix: str = "", values: BaseModel | None = None
) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) for every setting; nested models become dotted names
    and show the stage's own defaults (e.g. its sampling), not the nested model's."""
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        default = getattr(values, name) if values is not None else _default(info)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = default if isinstance(default, BaseModel) else None
            rows.extend(field_rows(annotation, f"{prefix}{name}.", nested))
            continue
        shown = json.dumps(default, default=str) if default != "(required)" else default
        rows.append((prefix + name, type_name(annotation), shown, info.description or ""))
    return rows


def format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    """Columns up to 40 characters wide; a longer cell (e.g. a long default) wraps onto the
    following lines instead of being cut off."""
    import textwrap

    rows = [tuple(headers)] + [tuple(str(c) for c in r) for r in rows]
    widths = [min(max(len(r[i]) for r in rows), 40) for i in range(len(headers) - 1)]
    indent = sum(widths) + 2 * len(widths)
    lines = []
    for n, row in enumerate(rows):
        columns = [textwrap.wrap(row[i], width=widths[i], break_on_hyphens=False) or [""] for i in range(len(widths))]
        columns.append(textwrap.wrap(row[-1], width=max(40, 110 - indent)) or [""])
        for k in range(max(len(c) for c in columns)):
            cells = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(columns, widths)]
            last = columns[-1][k] if k < len(columns[-1]) else ""
            lines.append("  ".join(cells + [last]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 11)
    return "\n".join(lines)


def endpoint_rows() -> list[tuple[str, str, str, str]]:
    """The endpoint keys, named as the workflow config names them (models.ALIAS.endpoint.*,
    stages.NAME.run.request_timeout_s/concurrency/retry/error_budget)."""
    from .engine.config import BreakerConfig, ConcurrencyConfig, RetryConfig
    from .stages import EndpointSettings

    rows = [r for r in field_rows(EndpointSettings) if r[0] not in ("concurrency", "retry", "breaker", "error_budget")]
    for key, model in (("concurrency", ConcurrencyConfig), ("retry", RetryConfig), ("error_budget", BreakerConfig)):
        rows += field_rows(model, f"{key}.")
    # Keys only the workflow config's endpoint shape has (the job turns them into `context`).
    from .config import Endpoint

    known = {row[0] for row in rows}
    rows += [
        (name, kind, default, f"Workflow config only (models.ALIAS.endpoint.{name}). {text}")
        for name, kind, default, text in field_rows(Endpoint)
        if name not in known
    ]
    return rows


def stage_help(name: str) -> str:
    import textwrap

    from .stages import get_stage

    stage = get_stage(name)
    table = format_table(field_rows(stage.config_model), ("name", "type", "default", "description"))
    endpoint = format_table(endpoint_rows(), ("name", "type", "default", "description"))
    inputs = ", ".join(stage.input_keys)
    about_endpoint = textwrap.fill(
        f"Endpoint (RUN.yaml `endpoint:`){' (not needed for engine pdf-text)' if name == 'ocr' else ''}: "
        "where requests go and how hard to push; they change no result. In the workflow config base_url, "
        f"model and api_key_env are the stage's model (models.ALIAS.endpoint.*, stages.{name}.model: ALIAS); "
        f"request_timeout_s, concurrency, retry and error_budget are stages.{name}.run.*:",
        width=110,
    )
    return (
        f"longdoc-sdg stage {name} --config RUN.yaml [key=value ...]\n\n{stage.description}\n\n"
        f"Inputs (RUN.yaml `inputs:`): {inputs}\n\n"
        f"{about_endpoint}\n{endpoint}\n\n"
        f"Settings (RUN.yaml `params:`, or key=value overrides; stages.{name}.settings.* in the workflow config):\n{table}\n"
    )


def stages_help() -> str:
    from .registry import STAGES

    rows = [(s.name, ", ".join(s.inputs), s.summary) for s in STAGES if s.handler]
    return (
        "longdoc-sdg stage NAME --config RUN.yaml [key=value ...]\n"
        "longdoc-sdg stage NAME --help   (settings of one stage)\n\n"
        + format_table(rows, ("stage", "inputs", "description"))
        + "\n\n"
        + RUN_FILE_HELP
    )


# ---------------------------------------------------------------------------------------------
# Overrides.


def set_dotted(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"cannot set {dotted}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def apply_overrides(run: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        value = yaml.safe_load(raw) if raw != "" else ""
        top = key.split(".", 1)[0]
        if top in RUN_KEYS:
            set_dotted(run, key, value)
        else:
            if run.get("params") is None:
                run["params"] = {}
            set_dotted(run["params"], key, value)
    return run


def load_run_file(path: str | None) -> dict:
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with {', '.join(RUN_KEYS)}")
    unknown = sorted(set(data) - set(RUN_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level keys {unknown}; allowed: {list(RUN_KEYS)} (settings go under params:)"
        )
    return data


# ---------------------------------------------------------------------------------------------
# `stage` subcommand.


def _stage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="stage name (see `longdoc-sdg stage --help`)")
    parser.add_argument("--config", "-c", help="RUN.yaml: inputs, output, endpoint, params")
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print the validated settings (defaults filled) and their hash, then exit",
    )
    parser.add_argument("-h", "--help", action="store_true", help="show the stage's settings table")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def _run_stage_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .io import setup_job_logging
    from .registry import handler_stages
    from .stages import get_stage, run_stage, stage_config_hash

    if args.name is None or args.name not in handler_stages():
        print(stages_help())
        if args.name is not None:
            print(f"\nerror: unknown stage {args.name!r}", file=sys.stderr)
            return 2
        return 0 if args.help else 2
    if args.help:
        print(stage_help(args.name))
        return 0
    try:
        run = apply_overrides(load_run_file(args.config), args.overrides)
        stage = get_stage(args.name)
        config = stage.config_model.model_validate(run.get("params") or {})
    except ValidationError as exc:
        print(f"error: invalid settings for stage {args.name}:\n{exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = config.model_dump(mode="json")
    endpoint = run.get("endpoint") or None
    if args.show_config:
        model = (endpoint or {}).get("model") if stage.needs_endpoint(config) else "pdf-text"
        print(
            yaml.safe_dump(
                {"params": params, "config_hash": stage_config_hash(args.name, params, model)}, sort_keys=False
            )
        )
        return 0
    missing = [k for k in ("inputs", "output") if not run.get(k)]
    if missing:
        print(f"error: RUN.yaml (or overrides) must give {' and '.join(missing)}", file=sys.stderr)
        return 2
    output = str(run["output"])
    journal = run.get("journal") or str(Path(output).parent / ".journal" / f"{Path(output).stem}.jsonl")
    setup_job_logging(None)
    summary = run_stage(
        args.name,
        {k: str(v) for k, v in run["inputs"].items()},
        output,
        params,
        endpoint,
        int(run.get("threads") or 1),
        journal,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


register("stage", "run one model stage on one shard, outside Snakemake", _stage_arguments, _run_stage_command)


def _requeue_arguments(parser: argparse.ArgumentParser) -> None:
    from .reprocess import add_arguments

    add_arguments(parser)


def _requeue_command(args: argparse.Namespace) -> int:
    from .reprocess import run_command

    return run_command(args)


# imported lazily: pyarrow and the engine load only when requeue runs
register(
    "requeue",
    "requeue failed rows of finished stage shards (then snakemake --forcerun them)",
    _requeue_arguments,
    _requeue_command,
)


def _score_arguments(parser: argparse.ArgumentParser) -> None:
    from .score.command import add_arguments

    add_arguments(parser)


def _score_command(args: argparse.Namespace) -> int:
    from .score.command import run_command

    return run_command(args)


register(
    "score", "score predictions by MMLongBench-Doc's rules (official or fixed mode)", _score_arguments, _score_command
)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluate import add_arguments

    add_arguments(parser)


def _evaluate_command(args: argparse.Namespace) -> int:
    from .evaluate import run_command

    return run_command(args)


register(
    "evaluate",
    "score a served model on a benchmark in MMLongBench-Doc's layout",
    _evaluate_arguments,
    _evaluate_command,
)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo import add_arguments

    add_arguments(parser)


def _demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


register(
    "demo",
    "the whole pipeline on the sample PDFs against a local stand-in server (DEMO data)",
    _demo_arguments,
    _demo_command,
)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longdoc-sdg", description="Grounded QA data from PDFs for VLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        # stage handles --help itself, so `stage NAME --help` can show that stage's table
        sub_parser = sub.add_parser(name, help=help_text, add_help=name != "stage")
        add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options; argparse leaves those to us
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "stage" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    _, _, handler = SUBCOMMANDS[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
