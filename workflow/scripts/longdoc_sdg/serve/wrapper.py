"""The serve wrapper: `python -m longdoc_sdg.serve run --spec SPEC`.

Runs the server as a child in its own process group on the node it lands on (a local
process group or a Slurm job), picks the free port there, reports host and port in the
bound file, forwards SIGTERM (SIGKILL after a grace), and stops an idle server.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..io import write_text_atomic
from .deployment import Deployment, build_command
from .procs import (
    advertised_host,
    free_port,
    http_get,
    now_iso,
    proc_start_time,
    read_json,
    signal_group,
    stop_group,
    unlink,
)

POLL_S = 1.0
# Past the ready timeout, an unpublished server is an orphan: serve() gave up or died.
UNPUBLISHED_MARGIN_S = 120.0


def say(message: str) -> None:
    # stderr is the server log (the launcher points it there).
    print(f"{now_iso()} [serve-wrapper] {message}", file=sys.stderr, flush=True)


def _metrics_busy(url: str) -> bool | None:
    """True when vLLM reports running or waiting requests; None when it can't tell."""
    status, body = http_get(f"{url}/metrics", timeout=5.0)
    if status != 200:
        return None
    busy = False
    for line in body.decode("utf-8", errors="replace").splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            try:
                busy = busy or float(line.rsplit(None, 1)[-1]) > 0
            except ValueError:
                continue
    return busy


class IdleWatch:
    """Last sign of use: a client heartbeat (file mtime) or requests in flight."""

    def __init__(self, heartbeat: Path, idle_timeout_s: float | None, probe_url: str):
        self.heartbeat = heartbeat
        self.idle_timeout_s = idle_timeout_s
        self.probe_url = probe_url
        self.last_busy = 0.0
        self.next_probe = 0.0
        self.probe_every = min(30.0, max(1.0, (idle_timeout_s or 60.0) / 4))

    def published(self) -> bool:
        return self.heartbeat.exists()

    def idle_for(self) -> float:
        try:
            last = self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            return 0.0
        now = time.time()
        if now >= self.next_probe:
            self.next_probe = now + self.probe_every
            if _metrics_busy(self.probe_url):
                self.last_busy = now
        return now - max(last, self.last_busy)


class Wrapper:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.dep = Deployment.model_validate(spec["deployment"])
        self.child: subprocess.Popen | None = None
        self.stop_reason: str | None = None

    def _on_signal(self, signum: int, _frame) -> None:
        self.stop_reason = f"received {signal.Signals(signum).name}"

    def _server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.dep.env_vars)
        key_path = Path(self.spec["key_path"])
        # The key reaches vLLM through its environment only (not argv: ps, sacct).
        env["VLLM_API_KEY"] = key_path.read_text(encoding="utf-8").strip()
        # Which replica this is (logs; test doubles misbehave per replica).
        env["LONGDOC_SERVE_REPLICA"] = str(self.spec.get("replica", 0))
        # One use: afterwards the key lives only in the runtime file (0600) and in memory.
        unlink(key_path)
        return env

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        bind_host = self.spec["bind_host"]
        # A fixed port is the first replica's; the next ones take the ports after it.
        port = self.dep.port + self.spec.get("replica", 0) if self.dep.port else free_port(bind_host)
        host = self.spec.get("advertise_host") or advertised_host()
        argv = build_command(self.dep, bind_host, port, self.spec.get("chat_template_path"))
        env = self._server_env()
        say(
            f"deployment {self.dep.name} instance {self.spec['instance']} replica "
            f"{self.spec.get('replica', 0)} of {self.spec.get('replicas', 1)} on {host}:{port}"
        )
        if self.dep.env_vars:
            say("extra environment: " + ", ".join(sorted(self.dep.env_vars)))
        say("command: " + shlex.join(argv))
        sys.stderr.flush()
        self.child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        del env
        bound = {
            "instance": self.spec["instance"],
            "host": host,
            "port": port,
            "wrapper_pid": os.getpid(),
            "server_pid": self.child.pid,
            "server_start_time": proc_start_time(self.child.pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "node": os.environ.get("SLURMD_NODENAME") or host,
            "started_at": now_iso(),
        }
        write_text_atomic(self.spec["bound_path"], json.dumps(bound, indent=2))
        code = self._watch(bind_host, port)
        self._cleanup()
        say(f"wrapper exits with {code}")
        return code

    def _watch(self, bind_host: str, port: int) -> int:
        probe_host = "127.0.0.1" if bind_host in ("0.0.0.0", "") else bind_host
        idle = IdleWatch(Path(self.spec["heartbeat_path"]), self.dep.idle_timeout_s, f"http://{probe_host}:{port}")
        started = time.monotonic()
        unpublished_limit = self.dep.ready_timeout_s + UNPUBLISHED_MARGIN_S
        while True:
            code = self.child.poll()
            if code is not None:
                say(f"server exited with code {code}")
                # Engine workers may outlive the front process: clear the whole group.
                stop_group(self.child.pid, grace_s=5.0)
                return code if code >= 0 else 128 - code
            if self.stop_reason is None:
                if not idle.published():
                    if time.monotonic() - started > unpublished_limit:
                        self.stop_reason = f"not published within {unpublished_limit:.0f}s (serve gave up?)"
                elif self.dep.idle_timeout_s is not None:
                    idle_s = idle.idle_for()
                    if idle_s > self.dep.idle_timeout_s:
                        self.stop_reason = f"idle for {idle_s:.0f}s (idle_timeout_s={self.dep.idle_timeout_s:g})"
            if self.stop_reason is not None:
                say(f"stopping server: {self.stop_reason}")
                self._stop_child()
                return 0
            time.sleep(POLL_S)

    def _stop_child(self) -> None:
        pgid = self.child.pid
        signal_group(pgid, signal.SIGTERM)
        try:
            self.child.wait(timeout=self.dep.stop_grace_s)
        except subprocess.TimeoutExpired:
            say(f"server ignored SIGTERM for {self.dep.stop_grace_s:g}s; SIGKILL")
        # Leftover workers of the group go too.
        signal_group(pgid, signal.SIGKILL)
        try:
            self.child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _cleanup(self) -> None:
        """A deployment whose every replica is gone must not stay published: the last wrapper
        to exit drops the runtime file so clients fail clearly and the next run serves again
        (the sentinel, identity only, stays). Each writes its exit marker first, then looks
        for the others', so of two exiting at once at least one sees them all. Only ours: a
        newer server may own the paths by now."""
        exit_path = self.spec.get("exit_path")
        if exit_path:
            marker = {"instance": self.spec["instance"], "at": now_iso(), "epoch": time.time()}
            write_text_atomic(exit_path, json.dumps(marker))
        others = self.spec.get("all_exit_paths") or []
        if any((read_json(path) or {}).get("instance") != self.spec["instance"] for path in others):
            return
        runtime = read_json(self.spec["runtime_path"])
        if runtime and runtime.get("instance") == self.spec["instance"]:
            unlink(self.spec["runtime_path"])
            unlink(self.spec["heartbeat_path"])
            say("unpublished: removed the runtime file")


def run_wrapper(spec_path: str | Path) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    return Wrapper(spec).run()
