"""Sandboxed rendering worker: `python -m longdoc_sdg.seed.worker --memory-mb N`.

Reads one JSON task per line on stdin and answers one JSON line per task on its protocol
stream (the original stdout; stray prints from libraries go to stderr instead). A task
renders pages [start, stop) of one PDF (kind "fingerprint": fingerprints it for source dedup
instead); PNG bytes are appended to the task's blob file and the answer lists their offsets,
so no image data crosses the pipe and the parent never unpickles anything from a process
that parses untrusted input.

Limits: RLIMIT_AS (memory) for the whole process, RLIMIT_CPU re-armed per task (the soft
limit is raised to "CPU used so far + the task's budget"); over budget the kernel kills the
process with SIGXCPU, which the parent turns into a `timeout` failure row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys

_MIB = 1024 * 1024


def _set_memory_limit(memory_mb: int) -> None:
    limit = memory_mb * _MIB
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a killed worker must not leave core files


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _arm_cpu_limit(budget_s: float) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(_cpu_used() + budget_s)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _die_with_parent() -> None:
    """A killed seed job (Snakemake cancel, Slurm walltime) must not leave a worker rendering
    on for minutes; Linux can deliver SIGKILL to us when the parent dies. (Strictly: when the
    parent thread that started us ends; the pool spawns from the job's main thread.)"""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: stdin EOF still ends us after the current task
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_task(task: dict) -> dict:
    """Render one task; always returns an answer dict (failures included)."""
    # Imported here so that `--help` and start-up stay cheap and errors stay in the answer.
    from .config import load_params
    from .errors import SeedFailure
    from .render import RenderOptions, open_pdf, render_pages

    started = _cpu_used()
    answer: dict = {"task_id": task["task_id"]}
    try:
        options = RenderOptions.from_params(load_params(task["params"]))
        doc = open_pdf(task["path"], options.max_document_pages)
        if task.get("kind") == "fingerprint":
            # Source dedup (seed/dedup.py): the text and first-page fingerprint, no rendering.
            from .decontaminate import fingerprint_pdf, load_config

            page_count = doc.page_count
            doc.close()
            fingerprint = fingerprint_pdf(task["path"], load_config(task["decontamination"]))
            answer.update(ok=True, page_count=page_count, fingerprint=fingerprint)
            answer["cpu_s"] = round(_cpu_used() - started, 3)
            return answer
        page_count = doc.page_count
        start = task["start"]
        stop = min(page_count, start + task["count"])
        pages = []
        with open(task["blob_path"], "wb") as blob:
            for page in render_pages(doc, start, stop, options):
                offset = blob.tell()
                blob.write(page.png)
                record = {k: v for k, v in page.__dict__.items() if k != "png"}
                record.update(png_offset=offset, png_size=len(page.png))
                pages.append(record)
        doc.close()
        answer.update(ok=True, page_count=page_count, pages=pages)
    except SeedFailure as failure:
        answer.update(ok=False, reason=failure.reason, message=failure.message)
    except MemoryError:
        answer.update(
            ok=False,
            reason="too_large",
            message="worker memory limit reached: raise seed.run.worker.memory_mb",
            fatal=True,
        )
    answer["cpu_s"] = round(_cpu_used() - started, 3)
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mb", type=int, default=4096)
    args = parser.parse_args(argv)
    _die_with_parent()

    # Keep the real stdout for the protocol; anything else printed goes to stderr (the job log).
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _set_memory_limit(args.memory_mb)

    # PyMuPDF imports the optional pymupdf_layout package (ONNX layout models, ~0.5 s and
    # hundreds of MB) whenever it is installed; rendering never uses it.
    sys.modules.setdefault("pymupdf.layout", None)
    import pymupdf

    # Bad PDFs are our daily bread: MuPDF's chatter would drown the job log.
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        task = json.loads(line)
        _arm_cpu_limit(task["cpu_limit_s"])
        answer = run_task(task)
        protocol.write(json.dumps(answer, ensure_ascii=False) + "\n")
        if answer.get("fatal"):
            return 3  # the heap may be in a poor state after MemoryError: start afresh
    return 0


if __name__ == "__main__":
    sys.exit(main())
