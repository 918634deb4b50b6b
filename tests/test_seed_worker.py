"""The sandboxed worker pool: answers, CPU limit, wall-clock guard, crashes, memory limit."""

import os
import queue
import signal
import time
from pathlib import Path

import pytest

import pdf_factory
from longdoc_sdg.seed.config import SeedParams
from longdoc_sdg.seed.pool import WorkerPool

SAMPLE = sorted((Path(__file__).resolve().parents[1] / "resources" / "sample_pdfs").glob("*.pdf"))[0]


def _task(task_id, path, tmp_path, cpu=30.0, wall=60.0, **params):
    return {
        "task_id": task_id,
        "path": str(path),
        "start": 0,
        "count": 4,
        "blob_path": str(tmp_path / f"{task_id}.bin"),
        "params": SeedParams.model_validate(params).model_dump(mode="json"),
        "cpu_limit_s": cpu,
        "wall_timeout_s": wall,
    }


def _wait(pool, events, timeout=60.0):
    """Pump events until a task finishes; return (task, answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.2)
        except queue.Empty:
            pool.expire()
            continue
        outcome = pool.handle(event)
        if outcome is not None:
            return outcome
    raise AssertionError("no answer from the worker pool")


@pytest.fixture
def pool():
    events = queue.Queue()
    pool = WorkerPool(1, 2048, events)
    yield pool, events
    pool.close()


def test_worker_renders_a_chunk_into_its_blob(pool, tmp_path):
    pool, events = pool
    task = _task(1, SAMPLE, tmp_path)
    pool.submit(task, task["wall_timeout_s"])
    _task_back, answer = _wait(pool, events)
    assert answer["ok"] and answer["page_count"] >= 4
    assert [p["page_number"] for p in answer["pages"]] == [1, 2, 3, 4]
    blob = Path(task["blob_path"]).read_bytes()
    assert sum(p["png_size"] for p in answer["pages"]) == len(blob)
    first = answer["pages"][0]
    assert blob[first["png_offset"] : first["png_offset"] + 8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_limit_turns_a_hang_into_timeout_and_the_pool_recovers(pool, tmp_path):
    pool, events = pool
    hang = pdf_factory.write(tmp_path / "hang.pdf", pdf_factory.hanging_pdf())
    pool.submit(_task(1, hang, tmp_path, cpu=1.0), 60)
    _task_back, answer = _wait(pool, events)
    assert answer == {"task_id": 1, "ok": False, "reason": "timeout", "message": answer["message"]}
    assert "CPU limit" in answer["message"]
    pool.submit(_task(2, SAMPLE, tmp_path), 60)  # a fresh worker takes the next task
    assert _wait(pool, events)[1]["ok"]
    assert pool.restarts == 1


def test_wall_clock_guard_kills_a_blocked_worker(pool, tmp_path):
    pool, events = pool
    hang = pdf_factory.write(tmp_path / "hang.pdf", pdf_factory.hanging_pdf())
    pool.submit(_task(1, hang, tmp_path, cpu=600.0, wall=2.0), 2.0)
    worker = next(w for w in pool._workers if w is not None)
    # A stopped process burns no CPU, like one blocked on I/O: only the wall clock sees it.
    os.kill(worker.process.pid, signal.SIGSTOP)
    _task_back, answer = _wait(pool, events)
    assert answer["reason"] == "timeout" and "wall-clock" in answer["message"]


def test_a_worker_killed_by_a_signal_is_a_crash(pool, tmp_path):
    pool, events = pool
    hang = pdf_factory.write(tmp_path / "hang.pdf", pdf_factory.hanging_pdf())
    pool.submit(_task(1, hang, tmp_path, cpu=60.0), 60)
    time.sleep(0.5)
    worker = next(w for w in pool._workers if w is not None)
    os.kill(worker.process.pid, signal.SIGSEGV)  # our own child, by pid
    _task_back, answer = _wait(pool, events)
    assert answer["reason"] == "crashed" and "SIGSEGV" in answer["message"]


def test_memory_limit_fails_the_document_not_the_job(tmp_path):
    events = queue.Queue()
    pool = WorkerPool(1, 700, events)  # far below what a 100-megapixel page needs
    try:
        giant = pdf_factory.write(tmp_path / "giant.pdf", pdf_factory.giant_page_pdf(200))
        pool.submit(_task(1, giant, tmp_path, max_pixels_per_page=100_000_000), 60)
        _task_back, answer = _wait(pool, events)
        assert not answer["ok"] and answer["reason"] == "too_large" and "malloc" in answer["message"]
        pool.submit(_task(2, SAMPLE, tmp_path), 60)
        assert _wait(pool, events)[1]["ok"]
    finally:
        pool.close()


def test_workers_die_with_their_parent(tmp_path):
    """A seed job killed mid-task (Slurm walltime, Snakemake cancel) leaves no worker behind."""
    import subprocess
    import sys
    import textwrap

    hang = pdf_factory.write(tmp_path / "hang.pdf", pdf_factory.hanging_pdf())
    script = textwrap.dedent(f"""
        import queue, time, sys
        from longdoc_sdg.seed.pool import WorkerPool
        from longdoc_sdg.seed.config import SeedParams
        pool = WorkerPool(1, 2048, queue.Queue())
        pool.submit({{"task_id": 1, "path": {str(hang)!r}, "start": 0, "count": 1, "blob_path": {str(tmp_path / "b")!r},
                      "params": SeedParams().model_dump(mode="json"), "cpu_limit_s": 600, "wall_timeout_s": 600}}, 600)
        print(pool._workers[0].process.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    time.sleep(0.5)
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{worker_pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    return  # dead, waiting for init to reap it
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(worker_pid, signal.SIGKILL)  # our own orphan: do not leave it running
    raise AssertionError(f"worker {worker_pid} outlived its parent")
