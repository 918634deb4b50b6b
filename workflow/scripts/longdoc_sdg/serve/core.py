"""serve() / teardown() and the client side (read_endpoint, verify_endpoint, keep_alive).

Files per deployment NAME (see docs in the package __init__):
  sentinel (declared Snakemake output)  identity only: deployment, model, served name, hash;
                                        written when ready, left in place when the server goes
  runtime file (mode 0600)              the ready replicas (base_url, host, port, pid or job
                                        id, log), the api key; rewritten as replicas become
                                        ready, removed when the last replica goes (teardown,
                                        death, reaping)
  <runtime>.heartbeat                   clients touch it; the wrappers' idle clock
  STATE/servers/NAME.json               what teardown needs to stop every replica + admitter
  STATE/servers/NAME/replica-I/         spec, bound file, exit marker, server.log of replica I
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from ..io import get_logger, redact, register_secret, write_text_atomic
from .deployment import Deployment, as_deployment, identity
from .launchers import DEAD, PENDING, LaunchError, get_launcher, wrapper_env
from .procs import (
    http_get,
    is_same_process,
    now_iso,
    proc_start_time,
    read_json,
    served_models,
    stop_group,
    tail,
    unlink,
)

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


def _replica_log(server_log: Path | None, work_dir: Path, index: int) -> Path:
    """Replica 0 keeps the given log name; the others get `.replica-N` before the suffix."""
    if server_log is None:
        return work_dir / "server.log"
    if index == 0:
        return server_log
    return server_log.with_name(f"{server_log.stem}.replica-{index}{server_log.suffix}")


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
    """Start every replica of a deployment, wait until `min_ready` serve their model, publish.

    Publishes atomically the runtime file (ready replicas + API key, mode 0600) and then the
    sentinel (identity only). Replicas still starting are admitted later by a detached admitter
    process that adds each to the runtime file once it is ready. Raises ServeError when too
    many replicas die first (within seconds, with each one's log tail), are not ready within
    ready_timeout_s, or have their port answered by a server that does not list our model.
    Returns identity plus the first base_url, timing and pids/job ids (never the key)."""
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
    given_log = Path(server_log).resolve() if server_log else None

    api_key = secrets.token_urlsafe(32)
    register_secret(api_key)
    chat_template_path = None
    if dep.chat_template:
        chat_template_path = work_dir / "chat_template.jinja"
        write_text_atomic(chat_template_path, dep.chat_template)

    instance = secrets.token_hex(8)
    replica_dirs = [work_dir / f"replica-{index}" for index in range(dep.replicas)]
    record: dict[str, Any] = {
        "deployment": dep.name,
        "launcher": runner.name,
        "instance": instance,
        "record_path": str(record_path),
        "work_dir": str(work_dir),
        "runtime_path": str(runtime_path),
        "sentinel_path": str(sentinel_path),
        "heartbeat_path": str(heartbeat_path(runtime_path)),
        "stop_grace_s": dep.stop_grace_s,
        "served_name": dep.served_name,
        "capacity": dep.max_num_seqs,
        "gpus_per_replica": dep.gpus_per_node * dep.nodes,
        "min_ready": dep.min_ready,
        "poll_s": poll_s,
        "mismatch_grace_s": mismatch_grace_s,
        "created_at": now_iso(),
        "ready": False,
        "replicas": [],
    }
    t0 = time.monotonic()
    with _sigterm_as_exception():
        try:
            for index, replica_dir in enumerate(replica_dirs):
                record["replicas"].append(
                    _start_replica(
                        dep,
                        runner,
                        record,
                        index,
                        replica_dir,
                        replica_dirs,
                        api_key,
                        chat_template_path,
                        _replica_log(given_log, replica_dir, index),
                    )
                )
                # Recorded after every start: teardown finds them even if this process dies now.
                _write_record(record)
            admission = Admission(dep, runner, record, api_key, poll_s, mismatch_grace_s)
            admission.run(until_ready=dep.min_ready)
        except BaseException as exc:
            try:
                _stop_and_forget(record, runner)
            except Exception as stop_exc:  # keep the original error; teardown retries the stop
                log.error("deployment %s: stopping the failed servers: %s", dep.name, stop_exc)
            if isinstance(exc, (LaunchError, OSError)):
                raise ServeError(f"deployment {dep.name}: could not launch the server: {exc}") from exc
            raise
        if any(r["state"] == STARTING for r in record["replicas"]):
            _start_admitter(record)

    total = time.monotonic() - t0
    runtime = read_json(runtime_path) or {}
    log.info(
        "deployment %s ready at %s after %.1fs (%d of %d replicas ready)",
        dep.name,
        runtime.get("base_url"),
        total,
        len(runtime.get("replicas", [])),
        dep.replicas,
    )
    first = record["replicas"][0]
    return {
        **identity(dep),
        "base_url": runtime.get("base_url"),
        "replicas": [r["base_url"] for r in runtime.get("replicas", [])],
        "launcher": runner.name,
        "pid": first.get("pid"),
        "job_id": first.get("job_id"),
        "ready_s": round(total, 2),
        "server_log": first["server_log"],
    }


STARTING, READY, FAILED = "starting", "ready", "failed"


def _start_replica(
    dep: Deployment,
    runner,
    record: dict[str, Any],
    index: int,
    replica_dir: Path,
    replica_dirs: list[Path],
    api_key: str,
    chat_template_path: Path | None,
    server_log: Path,
) -> dict[str, Any]:
    replica_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(replica_dir, 0o700)
    bound_path = replica_dir / "bound.json"
    exit_path = replica_dir / "exited.json"
    unlink(bound_path)
    unlink(exit_path)
    server_log.parent.mkdir(parents=True, exist_ok=True)
    log_offset = server_log.stat().st_size if server_log.exists() else 0
    # One key file per replica: each wrapper reads its own once and removes it.
    key_path = replica_dir / "api_key"
    write_text_atomic(key_path, api_key, mode=0o600)
    spec = {
        "instance": record["instance"],
        "replica": index,
        "replicas": len(replica_dirs),
        "deployment": dep.model_dump(mode="json"),
        "bind_host": runner.bind_host,
        "advertise_host": runner.advertise_host(),
        "bound_path": str(bound_path),
        "key_path": str(key_path),
        "chat_template_path": str(chat_template_path) if chat_template_path else None,
        "heartbeat_path": record["heartbeat_path"],
        "runtime_path": record["runtime_path"],
        "sentinel_path": record["sentinel_path"],
        "exit_path": str(exit_path),
        # The last replica to exit unpublishes the deployment.
        "all_exit_paths": [str(d / "exited.json") for d in replica_dirs],
    }
    spec_path = replica_dir / "spec.json"
    # env_vars may hold tokens: private like the key.
    write_text_atomic(spec_path, json.dumps(spec, indent=2), mode=0o600)
    replica: dict[str, Any] = {
        "index": index,
        "instance": record["instance"],
        "state": STARTING,
        "work_dir": str(replica_dir),
        "bound_path": str(bound_path),
        "key_path": str(key_path),
        "server_log": str(server_log),
        "log_offset": log_offset,
    }
    try:
        replica.update(runner.start(dep, spec_path, server_log, wrapper_env(PACKAGE_ROOT)))
    except (LaunchError, OSError):
        unlink(key_path)
        raise
    where = f"Slurm job {replica['job_id']}" if "job_id" in replica else f"pid {replica['pid']}"
    log.info(
        "deployment %s (%s): replica %d started as %s; server log %s",
        dep.name,
        dep.served_name,
        index,
        where,
        server_log,
    )
    return replica


def _log_tail(server_log: Path, offset: int, lines: int = 40) -> str:
    """The last lines this launch wrote to the server log (earlier launches' lines left out)."""
    return redact(tail(server_log, lines=lines, start=offset)) or "(server log is empty)"


def _replica_tail(replica: dict[str, Any], lines: int = 40) -> str:
    return f"Last lines of {replica['server_log']}:\n{_log_tail(Path(replica['server_log']), replica.get('log_offset', 0), lines)}"


class _ReplicaFailed(Exception):
    pass


class ReplicaWatch:
    """Readiness of one replica: /health 200 AND the served name in /v1/models (with our key),
    while its process or job is alive. `poll()` returns the bound info once ready, None while
    waiting, and raises _ReplicaFailed (message ends with the log tail) when it is hopeless."""

    def __init__(self, dep: Deployment, runner, replica: dict[str, Any], api_key: str, mismatch_grace_s: float):
        self.dep = dep
        self.runner = runner
        self.replica = replica
        self.api_key = api_key
        self.mismatch_grace_s = mismatch_grace_s
        self.submitted = time.monotonic()
        self.running_since: float | None = None
        self.mismatch_since: float | None = None
        self.mismatch = ""
        self.last_state = ""
        self.name = f"deployment {dep.name}" + (f" replica {replica['index']}" if dep.replicas > 1 else "")

    def poll(self) -> dict[str, Any] | None:
        dep, replica = self.dep, self.replica
        state, detail = self.runner.state(replica)
        if state == DEAD:
            # The wrapper writes its last words just before exiting; let them land.
            time.sleep(0.2)
            raise _ReplicaFailed(
                f"{self.name}: the server exited before it was ready ({detail}).\n{_replica_tail(replica)}"
            )
        now = time.monotonic()
        if state != self.last_state:
            log.info("%s: %s", self.name, detail)
            self.last_state = state
        if state == PENDING:
            if dep.queue_timeout_s is not None and now - self.submitted > dep.queue_timeout_s:
                raise _ReplicaFailed(f"{self.name}: {detail} still pending after {dep.queue_timeout_s:g}s")
            return None
        if self.running_since is None:
            self.running_since = now
        bound = read_json(replica["bound_path"])
        if bound and bound.get("instance") == replica["instance"]:
            base = f"http://{bound['host']}:{bound['port']}"
            status, _ = http_get(f"{base}/health", timeout=5.0)
            if status == 200:
                models_status, ids = served_models(base, self.api_key)
                if dep.served_name in ids:
                    bound["waited_s"] = now - self.running_since
                    return bound
                # Something answers on our port but does not serve our model (with our key).
                self.mismatch = (
                    f"{base} answers /health but /v1/models lists {ids} (HTTP {models_status}), not {dep.served_name!r}"
                )
                if self.mismatch_since is None:
                    self.mismatch_since = now
                    log.warning("%s: %s; not publishing", self.name, self.mismatch)
                if now - self.mismatch_since > self.mismatch_grace_s:
                    raise _ReplicaFailed(
                        f"{self.name}: refusing to publish: {self.mismatch} for {self.mismatch_grace_s:g}s; "
                        f"another server owns the port.\n{_replica_tail(replica)}"
                    )
            else:
                self.mismatch_since = None
        if now - self.running_since > dep.ready_timeout_s:
            why = f"; last seen: {self.mismatch}" if self.mismatch else ""
            raise _ReplicaFailed(
                f"{self.name}: not ready within ready_timeout_s={dep.ready_timeout_s:g}s{why}.\n{_replica_tail(replica)}"
            )
        return None


class Admission:
    """Watches the replicas still starting; publishes each one that becomes ready by rewriting
    the runtime file (the only writer while it runs: serve() until min_ready, then the
    admitter process). A replica that fails is stopped and never listed."""

    def __init__(
        self, dep: Deployment, runner, record: dict[str, Any], api_key: str, poll_s: float, mismatch_grace_s: float
    ):
        self.dep = dep
        self.runner = runner
        self.record = record
        self.api_key = api_key
        self.poll_s = poll_s
        self.watches = {
            r["index"]: ReplicaWatch(dep, runner, r, api_key, mismatch_grace_s)
            for r in record["replicas"]
            if r["state"] == STARTING
        }
        self.failures: list[str] = [r["error"] for r in record["replicas"] if r["state"] == FAILED]

    def ready(self) -> list[dict[str, Any]]:
        return [r for r in self.record["replicas"] if r["state"] == READY]

    def run(self, until_ready: int | None = None, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Poll until `until_ready` replicas are ready (None: until none is starting). Raises
        ServeError when fewer than min_ready can still become ready."""
        while self.watches and keep_going():
            for index, watch in list(self.watches.items()):
                replica = watch.replica
                try:
                    bound = watch.poll()
                except _ReplicaFailed as exc:
                    del self.watches[index]
                    self._fail(replica, str(exc))
                    continue
                if bound is not None:
                    del self.watches[index]
                    self._admit(replica, bound)
            if len(self.ready()) + len(self.watches) < self.dep.min_ready:
                raise ServeError(self._failure_message())
            if until_ready is not None and len(self.ready()) >= until_ready:
                return
            if self.watches:
                time.sleep(self.poll_s)

    def _failure_message(self) -> str:
        if len(self.failures) == 1 and self.dep.replicas == 1:
            return self.failures[0]
        head = (
            f"deployment {self.dep.name}: {len(self.failures)} of {self.dep.replicas} replicas failed before "
            f"they were ready, fewer than min_ready={self.dep.min_ready} are left"
        )
        return head + ":\n\n" + "\n\n".join(self.failures)

    def _fail(self, replica: dict[str, Any], message: str) -> None:
        log.error("%s", message)
        replica.update(state=FAILED, error=message)
        self.failures.append(message)
        try:
            self.runner.stop(replica, grace_s=float(self.record.get("stop_grace_s", 30)))
        except (LaunchError, OSError) as exc:
            log.error("deployment %s replica %d: stopping it: %s", self.dep.name, replica["index"], exc)
        unlink(replica.get("key_path"))
        # On its behalf (a cancelled queued job never ran its wrapper): the last replica to go
        # unpublishes the deployment.
        write_text_atomic(
            Path(replica["work_dir"]) / "exited.json",
            json.dumps({"instance": replica["instance"], "at": now_iso(), "epoch": time.time()}),
        )
        _write_record(self.record)

    def _admit(self, replica: dict[str, Any], bound: dict[str, Any]) -> None:
        base = f"http://{bound['host']}:{bound['port']}"
        replica.update(
            state=READY,
            host=bound["host"],
            port=bound["port"],
            url=base,
            base_url=f"{base}/v1",
            ready_at=now_iso(),
            ready_epoch=time.time(),
        )
        log.info(
            "deployment %s: replica %d ready at %s (%.1fs since its process started)",
            self.dep.name,
            replica["index"],
            replica["base_url"],
            bound.get("waited_s", 0.0),
        )
        if len(self.ready()) >= self.dep.min_ready:
            self._publish()
        _write_record(self.record)

    def _publish(self) -> None:
        record = self.record
        runtime_path = Path(record["runtime_path"])
        if record["ready"] and not runtime_path.exists():
            # Unpublished meanwhile (every replica went, or teardown): never resurrect it.
            return
        ready = self.ready()
        first = ready[0]
        replicas = [
            {
                "index": r["index"],
                "base_url": r["base_url"],
                "url": r["url"],
                "host": r["host"],
                "port": r["port"],
                "pid": r.get("pid"),
                "job_id": r.get("job_id"),
                "server_log": r["server_log"],
                "ready_at": r["ready_at"],
                "capacity": record.get("capacity"),
            }
            for r in ready
        ]
        runtime = {
            "deployment": record["deployment"],
            "model": self.dep.served_name,
            # The first ready replica, for clients that talk to one server.
            "base_url": first["base_url"],
            "url": first["url"],
            "host": first["host"],
            "port": first["port"],
            "pid": first.get("pid"),
            "job_id": first.get("job_id"),
            "server_log": first["server_log"],
            "replicas": replicas,
            "replicas_total": self.dep.replicas,
            "launcher": self.runner.name,
            "instance": record["instance"],
            "api_key": self.api_key,
            "heartbeat": record["heartbeat_path"],
            "ready_at": record.get("ready_at") or now_iso(),
        }
        # Runtime first, sentinel last: a sentinel always has an endpoint behind it.
        write_text_atomic(runtime_path, json.dumps(runtime, indent=2) + "\n", mode=0o600)
        if not record["ready"]:
            heartbeat_path(runtime_path).touch()
            write_text_atomic(record["sentinel_path"], json.dumps(identity(self.dep), indent=2, sort_keys=True) + "\n")
            record.update(ready=True, base_url=runtime["base_url"], ready_at=runtime["ready_at"])


def _start_admitter(record: dict[str, Any]) -> None:
    """A detached process that admits the replicas still starting (e.g. queued in Slurm) after
    serve() returned; teardown stops it with the replicas."""
    admit_log = Path(record["work_dir"]) / "admitter.log"
    with open(admit_log, "ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "longdoc_sdg.serve", "admit", "--record", record["record_path"]],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=wrapper_env(PACKAGE_ROOT),
            start_new_session=True,
            close_fds=True,
        )
    record["admitter"] = {"pid": proc.pid, "start_time": proc_start_time(proc.pid), "log": str(admit_log)}
    _write_record(record)
    log.info(
        "deployment %s: %d replica(s) still starting; admitter pid %d adds them when ready (log %s)",
        record["deployment"],
        sum(r["state"] == STARTING for r in record["replicas"]),
        proc.pid,
        admit_log,
    )


def run_admitter(record_path: str | Path) -> int:
    """Entry point of the admitter process: admit the replicas still starting, then exit."""
    from .deployment import deployment_from_dict

    record = read_json(record_path)
    runtime = read_json(record["runtime_path"]) if record else None
    if not record or not runtime or runtime.get("instance") != record["instance"]:
        return 0
    spec = read_json(Path(record["replicas"][0]["work_dir"]) / "spec.json") or {}
    dep = deployment_from_dict(spec["deployment"])
    register_secret(runtime["api_key"])
    admission = Admission(
        dep,
        get_launcher(record["launcher"]),
        record,
        runtime["api_key"],
        float(record.get("poll_s", 1.0)),
        float(record.get("mismatch_grace_s", MISMATCH_GRACE_S)),
    )

    def ours() -> bool:
        current = read_json(record_path)
        return bool(current) and current.get("instance") == record["instance"] and Path(record["runtime_path"]).exists()

    try:
        admission.run(keep_going=ours)
    except ServeError as exc:
        # Clients keep the replicas that are ready; the failed ones are in the log.
        log.error("%s", exc)
    return 0


def _forget_files(record: dict[str, Any]) -> None:
    """Unpublish: runtime file and heartbeat, unless a newer server owns them. The sentinel
    (identity only) stays: the workflow's clients take it as ancient() input, and a missing
    one would make Snakemake rerun every finished client of the deployment."""
    runtime = read_json(record["runtime_path"])
    if runtime is None or runtime.get("instance") == record.get("instance"):
        unlink(record["runtime_path"])
        unlink(record["heartbeat_path"])
    for replica in record.get("replicas", []):
        for key in ("key_path", "bound_path"):
            unlink(replica.get(key))


def _stop_admitter(record: dict[str, Any]) -> None:
    admitter = record.get("admitter") or {}
    if is_same_process(admitter.get("pid"), admitter.get("start_time")):
        stop_group(admitter["pid"], grace_s=5.0)


def ledger_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "ledger.jsonl"


_ledger_lock = threading.Lock()


def _scrape_counters(replica: dict[str, Any]) -> dict[str, float | None]:
    """What a replica served so far, from vLLM's /metrics counters (None once it is gone)."""
    from ..engine.pool import parse_metrics

    status, body = http_get(f"{replica['url']}/metrics", timeout=3.0)
    values = parse_metrics(body.decode("utf-8", "replace")) if status == 200 else {}
    return {
        "requests": values.get("vllm:request_success_total"),
        "prompt_tokens": values.get("vllm:prompt_tokens_total"),
        "generation_tokens": values.get("vllm:generation_tokens_total"),
    }


def _write_ledger(record: dict[str, Any]) -> None:
    """One line per deployment instance in STATE/ledger.jsonl: seconds each replica was ready
    (ready -> stop, or -> its exit), GPU-seconds, and what it served. Nothing for an instance
    that never had a ready replica."""
    ready = [r for r in record.get("replicas", []) if r.get("ready_epoch")]
    if not ready:
        return
    now = time.time()
    gpus = int(record.get("gpus_per_replica") or 0)
    rows = []
    for replica in ready:
        exited = read_json(Path(replica["work_dir"]) / "exited.json") or {}
        stopped = exited.get("epoch") if exited.get("instance") == record["instance"] else None
        stop_epoch = min(now, float(stopped)) if stopped else now
        counters = (
            _scrape_counters(replica)
            if not stopped
            else dict.fromkeys(("requests", "prompt_tokens", "generation_tokens"))
        )
        seconds = max(0.0, stop_epoch - float(replica["ready_epoch"]))
        rows.append(
            {
                "index": replica["index"],
                "ready_epoch": replica["ready_epoch"],
                "stop_epoch": stop_epoch,
                "seconds": round(seconds, 3),
                "gpu_seconds": round(seconds * gpus, 3),
                **counters,
            }
        )

    def total(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) if values else None

    entry = {
        "deployment": record["deployment"],
        "served_name": record.get("served_name"),
        "instance": record["instance"],
        "launcher": record["launcher"],
        "gpus_per_replica": gpus,
        "replicas_started": len(record.get("replicas", [])),
        "replicas_ready": len(rows),
        "replica_seconds": round(sum(r["seconds"] for r in rows), 3),
        "gpu_seconds": round(sum(r["gpu_seconds"] for r in rows), 3),
        "requests": total("requests"),
        "prompt_tokens": total("prompt_tokens"),
        "generation_tokens": total("generation_tokens"),
        "replicas": rows,
    }
    path = ledger_path(Path(record["record_path"]).parent.parent)
    with _ledger_lock, open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def _stop_and_forget(record: dict[str, Any], runner=None) -> None:
    """Stop the admitter first (it must not publish a replica being stopped), account for the
    ready replicas in the ledger, then stop every replica at once (each may wait a full grace
    period), still-queued Slurm jobs included."""
    runner = runner or get_launcher(record["launcher"])
    _stop_admitter(record)
    # The admitter may have admitted one more meanwhile.
    current = read_json(record["record_path"])
    if current and current.get("instance") == record["instance"]:
        record = {**current, "record_path": record["record_path"]}
    try:
        _write_ledger(record)
    except OSError as exc:  # accounting must never keep a server running
        log.error("deployment %s: could not write the ledger: %s", record["deployment"], exc)
    grace = float(record.get("stop_grace_s", 30))
    replicas = record.get("replicas", [])
    errors: list[str] = []

    def stop(replica: dict[str, Any]) -> None:
        try:
            runner.stop(replica, grace_s=grace)
        except (LaunchError, OSError, ValueError) as exc:
            errors.append(f"replica {replica.get('index')}: {exc}")

    if replicas:
        with ThreadPoolExecutor(max_workers=min(16, len(replicas))) as pool:
            list(pool.map(stop, replicas))
    if errors:
        raise LaunchError("; ".join(errors))
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
        states = [runner.state(replica) for replica in record.get("replicas", [])]
        if all(state == DEAD for state, _ in states):
            details = "; ".join(detail for _, detail in states) or "no replicas recorded"
            log.info("deployment %s: %s; unpublishing", record["deployment"], details)
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
            + _replica_tails(Path(runtime_path).parent, name)
        )
    register_secret(runtime.get("api_key"))
    return runtime


def _replica_tails(state_dir: Path, name: str) -> str:
    """Each replica's last log lines, when a deployment of several replicas lost them all."""
    record = read_json(_record_path(state_dir, name)) or {}
    replicas = record.get("replicas") or []
    if len(replicas) < 2:
        return ""
    return "".join(f"\nreplica {r['index']}: {_replica_tail(r, lines=15)}" for r in replicas)


def _replica_list(runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """Ready replicas as clients need them: base_url, capacity, server log."""
    listed = runtime.get("replicas") or [runtime]
    return [
        {
            "base_url": r["base_url"],
            "capacity": r.get("capacity"),
            "server_log": r.get("server_log"),
            "name": f"replica {r.get('index', 0)}",
        }
        for r in listed
    ]


def read_endpoint(runtime_path: str | Path) -> dict[str, Any]:
    """{base_url, model, api_key, replicas} of a published deployment; refreshes its heartbeat.
    base_url is the first ready replica; replicas lists every ready one."""
    runtime = _read_runtime(runtime_path)
    _touch(runtime.get("heartbeat") or heartbeat_path(runtime_path))
    return {
        "base_url": runtime["base_url"],
        "model": runtime["model"],
        "api_key": runtime["api_key"],
        "replicas": _replica_list(runtime),
    }


def read_replicas(runtime_path: str | Path) -> list[dict[str, Any]]:
    """The ready replicas listed now ([] once unpublished): clients re-read it every few
    seconds to pick up replicas that became ready after they started."""
    runtime = read_json(runtime_path)
    if runtime is None or not runtime.get("base_url"):
        return []
    return _replica_list(runtime)


def _replica_problem(url: str, api_key: str, model: str, timeout_s: float) -> str | None:
    status, _ = http_get(f"{url}/health", timeout=timeout_s)
    if status != 200:
        return "no answer on /health" if status == 0 else f"/health answered HTTP {status}"
    models_status, ids = served_models(url, api_key, timeout=timeout_s)
    if model not in ids:
        return f"/v1/models lists {ids} (HTTP {models_status}), not {model!r}"
    return None


def verify_endpoint(runtime_path: str | Path, timeout_s: float = 10.0) -> dict[str, Any]:
    """read_endpoint, after checking that at least one listed replica still answers /health and
    lists its model (the replicas that do not are left out). Raises EndpointGoneError with a
    message telling the user to rerun, and each replica's log tail, when none does."""
    runtime = _read_runtime(runtime_path)
    name = runtime["deployment"]
    listed = runtime.get("replicas") or [runtime]
    problems = {}
    for replica in listed:
        problem = _replica_problem(replica["url"], runtime["api_key"], runtime["model"], timeout_s)
        if problem:
            problems[replica["base_url"]] = problem
    if len(problems) == len(listed):
        if len(listed) == 1:
            raise EndpointGoneError(
                f"server for deployment {name} at {runtime['base_url']} is gone ({problems[runtime['base_url']]}); "
                f"{RERUN_HINT}"
            )
        details = "\n".join(
            f"replica {r.get('index')} at {r['base_url']}: {problems[r['base_url']]}.\n"
            f"Last lines of {r.get('server_log')}:\n{redact(tail(r.get('server_log'), lines=15))}"
            for r in listed
        )
        raise EndpointGoneError(f"server for deployment {name}: every replica is gone; {RERUN_HINT}.\n{details}")
    endpoint = read_endpoint(runtime_path)
    endpoint["replicas"] = [r for r in endpoint["replicas"] if r["base_url"] not in problems]
    endpoint["base_url"] = endpoint["replicas"][0]["base_url"]
    return endpoint


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
