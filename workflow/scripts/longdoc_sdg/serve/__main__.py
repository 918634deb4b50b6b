"""Command line: `python -m longdoc_sdg.serve {run,admit,serve,teardown,verify,identity} ...`."""

from __future__ import annotations

import argparse
import json
import sys

import yaml


def _overrides(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; values are parsed as YAML (numbers, lists, null)."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        result[key] = yaml.safe_load(value)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longdoc_sdg.serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the serve wrapper (started by the launchers)")
    run.add_argument("--spec", required=True, help="spec.json written by serve()")

    admit = sub.add_parser("admit", help="admit replicas still starting (started by serve())")
    admit.add_argument("--record", required=True, help="the deployment's record in STATE/servers")

    start = sub.add_parser("serve", help="start a deployment and publish it when ready")
    start.add_argument("deployment", help="deployment YAML file")
    start.add_argument("--sentinel", required=True)
    start.add_argument("--runtime", required=True)
    start.add_argument("--launcher", choices=["local", "slurm"], default="local")
    start.add_argument("--state-dir", required=True)
    start.add_argument("--server-log")
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")

    stop = sub.add_parser("teardown", help="stop every server recorded in a state dir")
    stop.add_argument("--state-dir", required=True)

    check = sub.add_parser("verify", help="check a published endpoint (prints it without the key)")
    check.add_argument("runtime")

    ident = sub.add_parser("identity", help="print a deployment's identity (sentinel content)")
    ident.add_argument("deployment")
    ident.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    args = parser.parse_args(argv)
    if args.command == "run":
        from .wrapper import run_wrapper

        return run_wrapper(args.spec)
    if args.command == "admit":
        from ..io import setup_job_logging as _setup
        from .core import run_admitter

        _setup(None)
        return run_admitter(args.record)

    from ..io import setup_job_logging
    from . import EndpointGoneError, ServeError, identity, load_deployment, serve, teardown, verify_endpoint

    setup_job_logging(None)
    try:
        if args.command == "serve":
            info = serve(
                args.deployment,
                args.sentinel,
                args.runtime,
                launcher=args.launcher,
                state_dir=args.state_dir,
                overrides=_overrides(args.set),
                server_log=args.server_log,
            )
            print(json.dumps(info, indent=2))
        elif args.command == "teardown":
            print(json.dumps(teardown(args.state_dir)))
        elif args.command == "verify":
            endpoint = verify_endpoint(args.runtime)
            print(json.dumps({k: v for k, v in endpoint.items() if k != "api_key"}, indent=2))
        elif args.command == "identity":
            print(json.dumps(identity(load_deployment(args.deployment, _overrides(args.set))), indent=2))
    except (ServeError, EndpointGoneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
