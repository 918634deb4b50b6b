"""A small pool of sandboxed worker processes (see `worker.py`) driven from one event queue.

Not concurrent.futures: a process pool there breaks as a whole when one worker dies, and a
worker dying on a hostile PDF is routine here. Each worker is a plain subprocess (no fork of
a threaded parent, no re-import of the Snakemake script); a reader thread per worker turns
its answers and its exit into events on the caller's queue. A worker that dies or overruns
its wall-clock deadline is replaced, and its task gets a `crashed` / `timeout` answer.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io import get_logger

log = get_logger("seed.pool")

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])

# Every page allocates a few buffers of several MB. With glibc's defaults each comes from a
# fresh mmap and is faulted in page by page: measured ~35% of a worker's CPU in the kernel.
# Serving them from a heap that is never trimmed removes that (RSS stays at the peak of the
# largest page, bounded by RLIMIT_AS). Both spellings: the legacy variables and tunables.
_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(256 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(512 * 1024 * 1024),
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=536870912",
}


@dataclass
class _Worker:
    slot: int
    generation: int
    process: subprocess.Popen
    task: dict | None = None
    deadline: float = 0.0
    killed_for_deadline: bool = False
    reader: threading.Thread | None = field(default=None, repr=False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerPool:
    """`size` workers; `submit` a task to an idle one, feed queue events to `handle`."""

    def __init__(self, size: int, memory_mb: int, events: "queue.Queue", stderr=None):
        self.size = max(1, size)
        self.memory_mb = memory_mb
        self.events = events
        self.stderr = stderr
        self._workers: list[_Worker | None] = [None] * self.size
        self._generation = 0
        self.restarts = 0

    # -- lifecycle -----------------------------------------------------------------

    def _stderr_target(self):
        target = self.stderr if self.stderr is not None else sys.stderr
        try:
            target.flush()
            target.fileno()
            return target  # the job log when setup_job_logging redirected sys.stderr
        except (AttributeError, OSError, ValueError):
            return None

    def _spawn(self, slot: int) -> _Worker:
        self._generation += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        for name, value in _MALLOC_ENV.items():
            # Keep the user's own tunables; ours go first so theirs win on conflicts.
            env[name] = f"{value}:{env[name]}" if name == "GLIBC_TUNABLES" and env.get(name) else env.get(name, value)
        process = subprocess.Popen(
            [sys.executable, "-m", "longdoc_sdg.seed.worker", "--memory-mb", str(self.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_target(),
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
            close_fds=True,
        )
        worker = _Worker(slot, self._generation, process)
        worker.reader = threading.Thread(target=self._read, args=(worker,), name=f"seed-worker-{slot}", daemon=True)
        worker.reader.start()
        self._workers[slot] = worker
        return worker

    def _read(self, worker: _Worker) -> None:
        for line in worker.process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                log.warning("worker %d sent a non-JSON line: %.200s", worker.process.pid, line)
                continue
            if not message.get("ready"):
                self.events.put(("answer", worker.slot, worker.generation, message))
        returncode = worker.process.wait()
        self.events.put(("exit", worker.slot, worker.generation, returncode))

    def start(self) -> None:
        for slot in range(self.size):
            if self._workers[slot] is None:
                self._spawn(slot)

    def close(self) -> None:
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.process.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self._workers = [None] * self.size

    # -- scheduling ----------------------------------------------------------------

    def idle_slots(self) -> int:
        return sum(1 for w in self._workers if w is None or w.task is None)

    def busy(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.task is not None)

    def submit(self, task: dict, wall_timeout_s: float) -> None:
        slot = next(i for i, w in enumerate(self._workers) if w is None or w.task is None)
        worker = self._workers[slot]
        if worker is None or worker.process.poll() is not None:
            worker = self._spawn(slot)  # an idle worker that died is replaced before use
        worker.task = task
        worker.deadline = time.monotonic() + wall_timeout_s
        worker.killed_for_deadline = False
        try:
            worker.process.stdin.write(json.dumps(task) + "\n")
            worker.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is gone; its exit event will fail the task

    def handle(self, event: tuple) -> tuple[dict, dict] | None:
        """Turn a worker event into (task, answer) when it finishes a task, else None."""
        kind, slot, generation, payload = event
        worker = self._workers[slot]
        if worker is None or worker.generation != generation:
            return None  # from a worker already replaced
        if kind == "answer":
            task, worker.task = worker.task, None
            if payload.get("fatal"):
                self._workers[slot] = None  # it exits now; never hand it another task
                self.restarts += 1
            if task is None or payload.get("task_id") != task["task_id"]:
                log.warning("worker %d answered an unknown task: %.200s", worker.process.pid, payload)
                return None
            return task, payload
        # The worker process is gone: replace it, and fail its task if it had one.
        task, worker.task = worker.task, None
        self._workers[slot] = None
        self.restarts += 1
        if task is None:
            return None
        return task, self._exit_answer(task, worker, payload)

    @staticmethod
    def _exit_answer(task: dict, worker: _Worker, returncode: int) -> dict:
        answer = {"task_id": task["task_id"], "ok": False}
        if worker.killed_for_deadline:
            limit = task.get("wall_timeout_s", 0)
            answer.update(
                reason="timeout",
                message=f"worker exceeded the wall-clock limit ({limit:.0f}s) and was killed: "
                "raise seed.run.worker.cpu_seconds_per_page or cpu_seconds_base",
            )
        elif returncode == -signal.SIGXCPU:
            answer.update(
                reason="timeout",
                message=f"worker exceeded its CPU limit of {task['cpu_limit_s']:.0f}s: "
                "raise seed.run.worker.cpu_seconds_per_page or cpu_seconds_base",
            )
        elif returncode < 0:
            answer.update(reason="crashed", message=f"worker died with {_signal_name(-returncode)}")
        else:
            answer.update(reason="crashed", message=f"worker exited with status {returncode}")
        return answer

    def expire(self) -> None:
        """Kill workers past their wall-clock deadline; their exit events fail the tasks."""
        now = time.monotonic()
        for worker in self._workers:
            if (
                worker is not None
                and worker.task is not None
                and not worker.killed_for_deadline
                and now > worker.deadline
            ):
                log.warning(
                    "killing worker %d: task %s over its wall-clock deadline",
                    worker.process.pid,
                    worker.task["task_id"],
                )
                worker.killed_for_deadline = True
                worker.process.kill()

    def next_deadline(self) -> float | None:
        deadlines = [
            w.deadline for w in self._workers if w is not None and w.task is not None and not w.killed_for_deadline
        ]
        return min(deadlines) if deadlines else None
