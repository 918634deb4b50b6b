"""serve() / teardown() and the client side (read_endpoint, verify_endpoint, keep_alive).

Files per deployment NAME (see docs in the package __init__):
  sentinel (declared Snakemake output)  identity only: deployment, model, served name, hash;
                                        written when ready, left in place when the server goes
  runtime file (mode 0600)              base_url, host, port, pid or job id, api key; removed
                                        whenever the server goes (teardown, death, reaping)
  <runtime>.heartbeat                   clients touch it; the wrapper's idle clock
  STATE/servers/NAME.json               what teardown needs to stop the server
  STATE/servers/NAME/                   spec, bound file, chat template, server.log
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from ..io import get_logger, redact, register_secret, write_text_atomic
from .deployment import Deployment, as_deployment, identity
from .launchers import DEAD, PENDING, LaunchError, get_launcher, wrapper_env
from .procs import http_get, now_iso, read_json, served_models, tail, unlink

log = get_logger("serve")

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# A port that answers /health but not with our model this long is someone else's server.
MISMATCH_GRACE_S = 60.0
RERUN_HINT = "rerun — the serve rule will start it again"


class ServeError(RuntimeError):
    """The server could not be brought up (died, timed out, or the port is not ours)."""


class EndpointGoneError(RuntimeError):
    """A published server no longer answers for its model."""


def heartbeat_path(runtime_path: str | Path) -> Path:
    return Path(f"{runtime_path}.heartbeat")


def servers_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "servers"


def _record_path(state_dir: str | Path, name: str) -> Path:
    return servers_dir(state_dir) / f"{name}.json"


def _write_record(record: dict[str, Any]) -> None:
    write_text_atomic(record["record_path"], json.dumps(record, indent=2, sort_keys=True) + "\n", mode=0o600)


class _Terminated(Exception):
    pass


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """Snakemake stops jobs with SIGTERM: turn it into an exception so a half-started
    server is stopped instead of orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise _Terminated(f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    deployment: Deployment | dict | str | Path,
    sentinel_path: str | Path,
    runtime_path: str | Path,
    launcher: str = "local",
    state_dir: str | Path = ".longdoc-serve",
    overrides: dict[str, Any] | None = None,
    *,
    server_log: str | Path | None = None,
    poll_s: float = 1.0,
    mismatch_grace_s: float = MISMATCH_GRACE_S,
) -> dict[str, Any]:
    """Start a deployment, wait until it serves its model, then publish it.

    Publishes atomically the runtime file (endpoint + API key, mode 0600) and then the
    sentinel (identity only). Raises ServeError when the server dies first (within seconds,
    with the tail of its log), when it is not ready within ready_timeout_s, or when its port
    is answered by a server that does not list our model. Returns identity plus base_url,
    timing and pid/job id (never the key)."""
    dep = as_deployment(deployment, overrides)
    runner = get_launcher(launcher)
    sentinel_path = Path(sentinel_path).resolve()
    runtime_path = Path(runtime_path).resolve()
    record_path = _record_path(state_dir, dep.name).resolve()
    work_dir = record_path.with_suffix("")

    previous = read_json(record_path)
    if previous:
        log.info("deployment %s: stopping the server started earlier (instance %s)", dep.name, previous.get("instance"))
        _stop_and_forget(previous)

    work_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(work_dir, 0o700)
    for path in (sentinel_path, runtime_path, heartbeat_path(runtime_path)):
        unlink(path)
    bound_path = work_dir / "bound.json"
    unlink(bound_path)
    server_log = Path(server_log).resolve() if server_log else work_dir / "server.log"
    server_log.parent.mkdir(parents=True, exist_ok=True)
    log_offset = server_log.stat().st_size if server_log.exists() else 0

    api_key = secrets.token_urlsafe(32)
    register_secret(api_key)
    key_path = work_dir / "api_key"
    write_text_atomic(key_path, api_key, mode=0o600)
    chat_template_path = None
    if dep.chat_template:
        chat_template_path = work_dir / "chat_template.jinja"
        write_text_atomic(chat_template_path, dep.chat_template)

    instance = secrets.token_hex(8)
    spec = {
        "instance": instance,
        "deployment": dep.model_dump(mode="json"),
        "bind_host": runner.bind_host,
        "advertise_host": runner.advertise_host(),
        "bound_path": str(bound_path),
        "key_path": str(key_path),
        "chat_template_path": str(chat_template_path) if chat_template_path else None,
        "heartbeat_path": str(heartbeat_path(runtime_path)),
        "runtime_path": str(runtime_path),
        "sentinel_path": str(sentinel_path),
    }
    spec_path = work_dir / "spec.json"
    # env_vars may hold tokens: private like the key.
    write_text_atomic(spec_path, json.dumps(spec, indent=2), mode=0o600)

    record: dict[str, Any] = {
        "deployment": dep.name,
        "launcher": runner.name,
        "instance": instance,
        "record_path": str(record_path),
        "work_dir": str(work_dir),
        "bound_path": str(bound_path),
        "key_path": str(key_path),
        "server_log": str(server_log),
        "runtime_path": str(runtime_path),
        "sentinel_path": str(sentinel_path),
        "heartbeat_path": str(heartbeat_path(runtime_path)),
        "stop_grace_s": dep.stop_grace_s,
        "created_at": now_iso(),
        "ready": False,
    }
    t0 = time.monotonic()
    with _sigterm_as_exception():
        try:
            record.update(runner.start(dep, spec_path, server_log, wrapper_env(PACKAGE_ROOT)))
        except (LaunchError, OSError) as exc:
            unlink(key_path)
            raise ServeError(f"deployment {dep.name}: could not launch the server: {exc}") from exc
        # Recorded before waiting: teardown finds it even if this process dies now.
        _write_record(record)
        where = f"Slurm job {record['job_id']}" if "job_id" in record else f"pid {record['pid']}"
        log.info("deployment %s (%s): started as %s; server log %s", dep.name, dep.served_name, where, server_log)
        try:
            bound, waited = _wait_ready(dep, runner, record, api_key, server_log, log_offset, poll_s, mismatch_grace_s)
        except BaseException:
            try:
                _stop_and_forget(record, runner)
            except Exception as exc:  # keep the original error; teardown retries the stop
                log.error("deployment %s: stopping the failed server: %s", dep.name, exc)
            raise

        base = f"http://{bound['host']}:{bound['port']}"
        runtime = {
            "deployment": dep.name,
            "model": dep.served_name,
            "base_url": f"{base}/v1",
            "url": base,
            "host": bound["host"],
            "port": bound["port"],
            "launcher": runner.name,
            "pid": record.get("pid"),
            "job_id": record.get("job_id"),
            "instance": instance,
            "api_key": api_key,
            "heartbeat": str(heartbeat_path(runtime_path)),
            "server_log": str(server_log),
            "ready_at": now_iso(),
        }
        # Runtime first, sentinel last: a sentinel always has an endpoint behind it.
        write_text_atomic(runtime_path, json.dumps(runtime, indent=2) + "\n", mode=0o600)
        heartbeat_path(runtime_path).touch()
        write_text_atomic(sentinel_path, json.dumps(identity(dep), indent=2, sort_keys=True) + "\n")
        record.update(ready=True, base_url=runtime["base_url"], ready_at=runtime["ready_at"])
        _write_record(record)

    total = time.monotonic() - t0
    log.info(
        "deployment %s ready at %s after %.1fs (%.1fs since the process started)",
        dep.name,
        runtime["base_url"],
        total,
        waited,
    )
    return {
        **identity(dep),
        "base_url": runtime["base_url"],
        "launcher": runner.name,
        "pid": record.get("pid"),
        "job_id": record.get("job_id"),
        "ready_s": round(total, 2),
        "server_log": str(server_log),
    }


def _log_tail(server_log: Path, offset: int, lines: int = 40) -> str:
    """The last lines this launch wrote to the server log (earlier launches' lines left out)."""
    return redact(tail(server_log, lines=lines, start=offset)) or "(server log is empty)"


def _wait_ready(
    dep: Deployment,
    runner,
    record: dict[str, Any],
    api_key: str,
    server_log: Path,
    log_offset: int,
    poll_s: float,
    mismatch_grace_s: float,
) -> tuple[dict[str, Any], float]:
    """Poll until /health is 200 and /v1/models lists our served name, watching the process
    or job. Returns (bound info, seconds since the server process started)."""
    submitted = time.monotonic()
    running_since: float | None = None
    mismatch_since: float | None = None
    mismatch = ""
    last_state = ""
    while True:
        state, detail = runner.state(record)
        if state == DEAD:
            # The wrapper writes its last words just before exiting; let them land.
            time.sleep(0.2)
            raise ServeError(
                f"deployment {dep.name}: the server exited before it was ready ({detail}).\n"
                f"Last lines of {server_log}:\n{_log_tail(server_log, log_offset)}"
            )
        now = time.monotonic()
        if state != last_state:
            log.info("deployment %s: %s", dep.name, detail)
            last_state = state
        if state == PENDING:
            if dep.queue_timeout_s is not None and now - submitted > dep.queue_timeout_s:
                raise ServeError(f"deployment {dep.name}: {detail} still pending after {dep.queue_timeout_s:g}s")
            time.sleep(poll_s)
            continue
        if running_since is None:
            running_since = now
        bound = read_json(record["bound_path"])
        if bound and bound.get("instance") == record["instance"]:
            base = f"http://{bound['host']}:{bound['port']}"
            status, _ = http_get(f"{base}/health", timeout=5.0)
            if status == 200:
                models_status, ids = served_models(base, api_key)
                if dep.served_name in ids:
                    return bound, now - running_since
                # Something answers on our port but does not serve our model (with our key).
                mismatch = (
                    f"{base} answers /health but /v1/models lists {ids} (HTTP {models_status}), not {dep.served_name!r}"
                )
                if mismatch_since is None:
                    mismatch_since = now
                    log.warning("deployment %s: %s; not publishing", dep.name, mismatch)
                if now - mismatch_since > mismatch_grace_s:
                    raise ServeError(
                        f"deployment {dep.name}: refusing to publish: {mismatch} for {mismatch_grace_s:g}s; "
                        f"another server owns the port.\nLast lines of {server_log}:\n{_log_tail(server_log, log_offset)}"
                    )
            else:
                mismatch_since = None
        if now - running_since > dep.ready_timeout_s:
            why = f"; last seen: {mismatch}" if mismatch else ""
            raise ServeError(
                f"deployment {dep.name}: not ready within ready_timeout_s={dep.ready_timeout_s:g}s{why}.\n"
                f"Last lines of {server_log}:\n{_log_tail(server_log, log_offset)}"
            )
        time.sleep(poll_s)


def _forget_files(record: dict[str, Any]) -> None:
    """Unpublish: runtime file and heartbeat, unless a newer server owns them. The sentinel
    (identity only) stays: the workflow's clients take it as ancient() input, and a missing
    one would make Snakemake rerun every finished client of the deployment."""
    runtime = read_json(record["runtime_path"])
    if runtime is None or runtime.get("instance") == record.get("instance"):
        unlink(record["runtime_path"])
        unlink(record["heartbeat_path"])
    for key in ("key_path", "bound_path"):
        unlink(record.get(key))


def _stop_and_forget(record: dict[str, Any], runner=None) -> None:
    runner = runner or get_launcher(record["launcher"])
    runner.stop(record, grace_s=float(record.get("stop_grace_s", 30)))
    _forget_files(record)
    unlink(record["record_path"])


def _records(state_dir: str | Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(servers_dir(state_dir).glob("*.json")):
        record = read_json(path)
        if record is None:
            unlink(path)
            continue
        record["record_path"] = str(path)
        records.append(record)
    return records


def teardown(state_dir: str | Path, only: str | None = None) -> list[str]:
    """Stop every server recorded in state_dir (or only deployment `only`): SIGTERM the group,
    SIGKILL after the grace; scancel and wait until squeue drops the job; unpublish them.
    Idempotent. Returns the deployments stopped; raises ServeError (after trying all) if a job
    refused to go."""
    records = [r for r in _records(state_dir) if only is None or r["deployment"] == only]
    if not records:
        return []
    t0 = time.monotonic()
    errors: list[str] = []

    def stop(record: dict[str, Any]) -> str:
        try:
            _stop_and_forget(record)
        except (LaunchError, OSError, ValueError) as exc:
            errors.append(f"{record['deployment']}: {exc}")
        return record["deployment"]

    # In parallel: each may wait a full grace period.
    with ThreadPoolExecutor(max_workers=min(8, len(records))) as pool:
        names = list(pool.map(stop, records))
    log.info("teardown: stopped %s in %.1fs", ", ".join(names), time.monotonic() - t0)
    if errors:
        raise ServeError("teardown could not stop: " + "; ".join(errors))
    return names


def reap_stale(state_dir: str | Path) -> list[str]:
    """Unpublish servers whose process or job is gone (e.g. after a SIGKILLed run): their
    runtime files go, so the next DAG serves again where clients need it. Call at parse time,
    before the DAG is built."""
    reaped = []
    for record in _records(state_dir):
        runner = get_launcher(record["launcher"])
        state, detail = runner.state(record)
        if state == DEAD:
            log.info("deployment %s: %s; unpublishing", record["deployment"], detail)
            _stop_and_forget(record, runner)
            reaped.append(record["deployment"])
    return reaped


def _touch(path: str | Path) -> None:
    # Only refresh: recreating a removed heartbeat would resurrect an unpublished server's file.
    try:
        os.utime(path)
    except OSError:
        pass


def _read_runtime(runtime_path: str | Path) -> dict[str, Any]:
    runtime = read_json(runtime_path)
    if runtime is None or not runtime.get("base_url"):
        name = Path(runtime_path).name.split(".")[0]
        raise EndpointGoneError(
            f"server for deployment {name} is not running (no runtime file {runtime_path}); {RERUN_HINT}"
        )
    register_secret(runtime.get("api_key"))
    return runtime


def read_endpoint(runtime_path: str | Path) -> dict[str, Any]:
    """{base_url, model, api_key} of a published server; refreshes its heartbeat."""
    runtime = _read_runtime(runtime_path)
    _touch(runtime.get("heartbeat") or heartbeat_path(runtime_path))
    return {"base_url": runtime["base_url"], "model": runtime["model"], "api_key": runtime["api_key"]}


def verify_endpoint(runtime_path: str | Path, timeout_s: float = 10.0) -> dict[str, Any]:
    """read_endpoint, after checking the server still answers /health and lists its model.
    Raises EndpointGoneError with a message telling the user to rerun."""
    runtime = _read_runtime(runtime_path)
    base, name = runtime["url"], runtime["deployment"]
    status, _ = http_get(f"{base}/health", timeout=timeout_s)
    problem = None
    if status != 200:
        problem = "no answer on /health" if status == 0 else f"/health answered HTTP {status}"
    else:
        models_status, ids = served_models(base, runtime["api_key"], timeout=timeout_s)
        if runtime["model"] not in ids:
            problem = f"/v1/models lists {ids} (HTTP {models_status}), not {runtime['model']!r}"
    if problem:
        raise EndpointGoneError(
            f"server for deployment {name} at {runtime['base_url']} is gone ({problem}); {RERUN_HINT}"
        )
    return read_endpoint(runtime_path)


@contextlib.contextmanager
def keep_alive(runtime_path: str | Path, interval_s: float = 60.0) -> Iterator[None]:
    """Touch the server's heartbeat every interval_s while the block runs, so the idle
    backstop never stops a server a client is still using."""
    runtime = read_json(runtime_path) or {}
    beat = runtime.get("heartbeat") or heartbeat_path(runtime_path)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            _touch(beat)

    _touch(beat)
    thread = threading.Thread(target=loop, name="serve-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def keep_servers_alive(state_dir: str | Path, interval_s: float = 60.0) -> Callable[[], None]:
    """Touch the heartbeat of every server recorded in state_dir every interval_s, from a
    daemon thread, until the returned function is called. Meant for the Snakemake main
    process (onstart): the idle backstop then fires only once the run that owns the
    servers is gone (e.g. SIGKILLed), never while client jobs wait in a queue."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            for record in _records(state_dir):
                if record.get("ready"):
                    _touch(record["heartbeat_path"])
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="serve-run-heartbeat", daemon=True).start()
    return stop.set
