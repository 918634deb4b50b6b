"""`longdoc-sdg demo`: the whole pipeline on the sample PDFs in one command.

It starts the FAKE OpenAI-compatible server (longdoc_sdg.testing, a test double: made-up,
deterministic answers) on loopback at the port of config/demo.yaml's endpoints, runs the
workflow with config/demo.yaml over the default config (local profile), writes the HTML report,
and stops the server. `--vllm` serves the tiny CPU vLLM deployment instead (real model calls,
noisy answers; the workflow's serve rule starts and stops it).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

REPO = Path(__file__).resolve().parents[3]
SNAKEFILE = REPO / "workflow" / "Snakefile"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
DEMO_VLLM_CONFIG = REPO / "config" / "demo-vllm.yaml"
LOCAL_PROFILE = REPO / "profiles" / "local"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--directory",
        "-d",
        default=".",
        help="working directory of the run (default: here; results go to its results-demo/)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="loopback port of the fake server (default: the one in config/demo.yaml, 18765)",
    )
    parser.add_argument("--cores", default="all", help="snakemake --cores (default: all)")
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="real calls: serve the tiny CPU vLLM deployment (bash tests/vllm/install.sh first)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report (snakemake --report)")
    parser.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="further snakemake arguments, after `--` (e.g. -- -n for a dry run)",
    )


def demo_port(config_path: Path = DEMO_CONFIG) -> int:
    """The port the demo config's endpoints point at (all stages share one server)."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    urls = {(m.get("endpoint") or {}).get("base_url") for m in config["models"].values()} - {None}
    ports = {urlparse(u).port for u in urls}
    if len(ports) != 1:
        raise ValueError(
            f"{config_path}: the demo expects every models.ALIAS.endpoint.base_url on one port, got {sorted(urls)}"
        )
    return ports.pop()


def overrides(workdir: Path, port: int | None, vllm: bool) -> dict:
    """What the demo changes over config/demo.yaml for this working directory and port."""
    out: dict = {}
    if not (workdir / "resources" / "sample_pdfs").is_dir():
        out["source"] = {"settings": {"local": {"path": str(REPO / "resources" / "sample_pdfs")}}}
    if vllm and not (workdir / "config" / "deployments").is_dir():
        out["serving"] = {"run": {"deployments_dir": str(REPO / "config" / "deployments")}}
    if port is not None and not vllm:
        config = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
        out["models"] = {
            alias: {"endpoint": {"base_url": f"http://127.0.0.1:{port}/v1"}}
            for alias, model in config["models"].items()
            if (model.get("endpoint") or {}).get("base_url")
        }
    return out


def snakemake_command(workdir: Path, configfiles: list[Path], cores: str, extra: list[str]) -> list[str]:
    return [
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--profile",
        str(LOCAL_PROFILE),
        "--cores",
        str(cores),
        "--configfile",
        *map(str, configfiles),
        *extra,
    ]


def run_demo(args: argparse.Namespace) -> int:
    from .testing.fake_openai_server import spawn_fake_server

    workdir = Path(args.directory).resolve()
    extra = [a for a in args.snakemake_args if a != "--"]
    configs = [DEMO_CONFIG] + ([DEMO_VLLM_CONFIG] if args.vllm else [])
    results_dir = yaml.safe_load(configs[-1].read_text(encoding="utf-8"))["results_dir"]
    override = overrides(workdir, args.port, args.vllm)
    if override:
        path = workdir / results_dir / ".demo-overrides.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(override), encoding="utf-8")
        configs.append(path)
    command = snakemake_command(workdir, configs, args.cores, extra)
    report = workdir / results_dir / "report.html"

    def run() -> int:
        print("longdoc-sdg demo: " + " ".join(command), file=sys.stderr, flush=True)
        code = subprocess.call(command)
        if code == 0 and not args.no_report and "-n" not in extra and "--dry-run" not in extra:
            code = subprocess.call(command + ["--report", str(report)])
            if code == 0:
                print(f"longdoc-sdg demo: DEMO report {report}", file=sys.stderr)
        return code

    if args.vllm:
        return run()
    port = args.port if args.port is not None else demo_port()
    if shutil.which("snakemake") is None:
        print("error: snakemake is not on PATH: pip install -e .", file=sys.stderr)
        return 2
    print(
        f"longdoc-sdg demo: starting the FAKE OpenAI-compatible server (a test double, not a model) "
        f"on 127.0.0.1:{port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server = spawn_fake_server(
            "--host", "127.0.0.1", "--port", str(port), "--model", "demo-test-double", "--reasoning"
        )
        with server:
            return run()
    except RuntimeError as exc:
        print(f"error: {exc}; is port {port} taken? Pick another with --port", file=sys.stderr)
        return 2
