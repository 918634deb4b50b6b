"""`run_seed_shard`: one manifest shard -> pages, documents and failures tables.

Flow: download threads fetch PDFs ahead (bounded), worker processes render chunks of pages
into blob files, and a writer thread appends each finished document as one parquet row group
(in completion order) straight from memory-mapped blobs, so memory holds no more than the
documents in flight. The small tables are written in manifest order at the end. Every
manifest row ends as a seeded document or one failure row; the job checks that.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import mmap
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path, get_logger, progress, remove_stale_temps, write_parquet_atomic
from .config import SeedParams, load_params
from .decontaminate import SeedScreen
from .dedup import load_exclusions, load_shard_sha
from .errors import SeedFailure
from .fetch import materialise
from .pool import WorkerPool

log = get_logger("seed")

PAGES_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("page_number", pa.int32()),
        ("png", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("dpi", pa.float32()),
        ("is_gray", pa.bool_()),
        ("page_width_pt", pa.float32()),
        ("page_height_pt", pa.float32()),
        ("pdf_text", pa.string()),
        ("text_blocks", pa.string()),
    ]
)
DOCUMENTS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source_kind", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("total_pages", pa.int32()),
        ("extra", pa.string()),
        # Of the bytes seeded: the export drops a document seeded again in a later shard (downloads
        # are compared across shards only there, without downloading anything twice).
        ("sha256", pa.string()),
    ]
)
FAILURES_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ]
)

_PAGE_META = [f.name for f in PAGES_SCHEMA if f.name not in ("doc_id", "png")]
_MAX_MESSAGE = 2000


@dataclass
class _Doc:
    index: int
    row: dict
    path: Path | None = None
    temporary: bool = False
    page_count: int | None = None
    chunks: dict[int, dict] = field(default_factory=dict)  # start page (0-based) -> answer
    outstanding: int = 0
    failure: tuple[str, str] | None = None
    done: bool = False


def _cpu_budget(params: SeedParams, pages: int) -> float:
    return params.worker.cpu_seconds_base + params.worker.cpu_seconds_per_page * pages


def _wall_budget(cpu_budget: float) -> float:
    # CPU limits catch busy hangs; this catches blocked ones and an oversubscribed machine.
    return 2 * cpu_budget + 30


class _PagesWriter:
    """Streams one row group per document into a parquet file, from the workers' blobs."""

    def __init__(self, path: Path):
        self.writer = pq.ParquetWriter(
            path,
            PAGES_SCHEMA,
            compression="zstd",
            use_dictionary=["doc_id"],
            write_statistics=["doc_id", "page_number", "width", "height", "dpi", "is_gray"],
        )
        self.pages = 0

    def write_document(self, doc_id: str, chunks: list[tuple[dict, Path]]) -> int:
        columns: dict[str, list] = {name: [] for name in PAGES_SCHEMA.names}
        maps = []
        rows = 0
        for answer, blob_path in chunks:
            pages = answer["pages"]
            if not pages:
                continue
            size = blob_path.stat().st_size
            offsets = [p["png_offset"] for p in pages] + [pages[-1]["png_offset"] + pages[-1]["png_size"]]
            # The worker appends PNGs back to back; check before trusting the offsets.
            if (
                offsets[0] != 0
                or offsets[-1] != size
                or any(p["png_offset"] + p["png_size"] != nxt for p, nxt in zip(pages, offsets[1:]))
            ):
                raise RuntimeError(f"blob {blob_path.name} does not match its page list")
            if size >= 2**31:
                raise RuntimeError(f"blob {blob_path.name} is over 2 GiB")
            with open(blob_path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            maps.append(mapped)
            n = len(pages)
            # Zero-copy: the PNG column's data buffer is the mapped blob file itself.
            offsets_buffer = pa.py_buffer(np.asarray(offsets, dtype=np.int32))
            columns["png"].append(pa.Array.from_buffers(pa.binary(), n, [None, offsets_buffer, pa.py_buffer(mapped)]))
            columns["doc_id"].append(pa.array([doc_id] * n, pa.string()))
            for name in _PAGE_META:
                columns[name].append(pa.array([p[name] for p in pages], PAGES_SCHEMA.field(name).type))
            rows += n
        arrays = [pa.chunked_array(columns[field.name], field.type) for field in PAGES_SCHEMA]
        table = pa.Table.from_arrays(arrays, schema=PAGES_SCHEMA)
        self.writer.write_table(table, row_group_size=max(1, rows))
        del table, columns
        for mapped in maps:
            if isinstance(mapped, mmap.mmap):
                try:
                    mapped.close()
                except BufferError:
                    pass  # still referenced by Arrow; freed with it
        self.pages += rows
        return rows

    def close(self) -> None:
        self.writer.close()


class _BackgroundWriter:
    """Writes documents on a thread (Arrow's zstd releases the GIL), so the event loop keeps
    the workers fed while a row group is compressed. A small queue gives backpressure."""

    def __init__(self, writer: _PagesWriter, depth: int = 4):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="seed-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            doc_id, chunks, expected, cleanup = item
            try:
                if self.error is None:
                    written = self.writer.write_document(doc_id, chunks)
                    if written != expected:
                        raise RuntimeError(f"{doc_id}: wrote {written} pages of {expected}")
            except BaseException as error:  # re-raised on the main thread
                self.error = error
            finally:
                for path in cleanup:
                    path.unlink(missing_ok=True)

    def submit(self, doc_id: str, chunks: list, expected: int, cleanup: list[Path]) -> None:
        self.check()
        self.queue.put((doc_id, chunks, expected, cleanup))

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing pages failed: {self.error}") from self.error

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.writer.close()
        self.check()


def _read_manifest(path: str) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    seen = set()
    for row in rows:
        if row["doc_id"] in seen:
            raise ValueError(f"manifest {path} lists doc_id {row['doc_id']} twice")
        seen.add(row["doc_id"])
    return rows


def _rendered_content(doc: _Doc, workdir: Path, first_pages: int) -> tuple[str, list[bytes]]:
    """A rendered document's text layer and the PNGs of its first pages (from the blobs)."""
    text = "\n".join(p.get("pdf_text") or "" for start in sorted(doc.chunks) for p in doc.chunks[start]["pages"])
    pngs = []
    first = doc.chunks.get(0)
    if first:
        with open(workdir / f"{doc.index}-0.bin", "rb") as blob:
            for page in first["pages"][:first_pages]:
                blob.seek(page["png_offset"])
                pngs.append(blob.read(page["png_size"]))
    return text, pngs


def _extra_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def run_seed_shard(
    manifest_path: str,
    outputs: dict[str, str],
    params: dict,
    threads: int,
    decontamination: dict | None = None,
    cache_dir: str | None = None,
    screening: dict[str, str] | None = None,
) -> dict:
    """Seed every document of one manifest shard; returns a small summary dict.

    decontamination: the `decontamination` config section (benchmark documents are not seeded);
    cache_dir: where the benchmark index's fingerprints are cached (default: next to the shard);
    screening: the cross-shard screen's files (seed/dedup.py): `exclusions` (its decisions) and
    `fingerprints` (this shard's table); None: this shard is screened on its own.
    """
    params = load_params(params)
    rows = _read_manifest(manifest_path)
    exclusions = known_sha = None
    if screening:
        exclusions = load_exclusions(screening["exclusions"], [r["doc_id"] for r in rows])
        known_sha = load_shard_sha(screening["fingerprints"])
    pages_path = Path(outputs["pages"])
    pages_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in pages_path.parent.glob(".seed-work-*"):  # left by a killed run of this shard
        shutil.rmtree(stale, ignore_errors=True)
    for output in outputs.values():
        remove_stale_temps(output)
    workdir = Path(tempfile.mkdtemp(prefix=".seed-work-", dir=pages_path.parent))
    started = time.monotonic()
    log.info("seeding %d documents from %s with %d worker(s)", len(rows), manifest_path, max(1, threads))
    try:
        with atomic_path(pages_path) as pages_tmp:
            screen = SeedScreen(
                decontamination, cache_dir or pages_path.parent.parent / ".decontamination", rows, exclusions, known_sha
            )
            summary = _run(rows, params, max(1, threads), workdir, pages_tmp, outputs, screen)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    summary["seconds"] = round(elapsed, 3)
    log.info(
        "seeded %d/%d documents, %d pages in %.1fs (%.1f pages/s); failures by reason: %s",
        summary["documents"],
        len(rows),
        summary["pages"],
        elapsed,
        summary["pages"] / max(elapsed, 1e-9),
        summary["failures_by_reason"] or "none",
    )
    return summary


def _run(rows, params: SeedParams, threads: int, workdir: Path, pages_tmp: Path, outputs, screen: SeedScreen) -> dict:
    events: queue.Queue = queue.Queue()
    docs = [_Doc(i, row) for i, row in enumerate(rows)]
    tasks: collections.deque = collections.deque()  # (doc index, start page)
    task_docs: dict[int, tuple[int, int]] = {}
    ready: collections.deque = collections.deque()  # docs settled, not yet written
    # (manifest index, row) so the small tables come out in manifest order whatever the
    # completion order; page row groups are written as documents complete, so one slow
    # download never holds up the rest of the shard.
    documents, failures = [], []
    pool = WorkerPool(threads, params.worker.memory_mb, events)
    downloads = concurrent.futures.ThreadPoolExecutor(
        max_workers=params.download.concurrency, thread_name_prefix="seed-fetch"
    )
    writer = _BackgroundWriter(_PagesWriter(pages_tmp))
    # Documents being fetched or rendered at once: bounds disk use and memory.
    in_flight_cap = max(4, 2 * threads + params.download.concurrency)
    in_flight = 0
    next_fetch = 0
    finished = 0
    task_counter = 0
    pages_done = 0
    bar = progress(total=len(rows), desc="seed", unit="doc")

    def start_fetches() -> None:
        nonlocal next_fetch, in_flight
        while next_fetch < len(docs) and in_flight < in_flight_cap:
            doc = docs[next_fetch]
            refused = screen.before_fetch(doc.row)  # excluded, or a benchmark's by name: not even fetched
            if refused:
                next_fetch += 1
                in_flight += 1
                fail(doc, *refused)
                continue
            future = downloads.submit(materialise, doc.row, params, workdir)
            future.add_done_callback(lambda f, i=doc.index: events.put(("fetched", i, f)))
            next_fetch += 1
            in_flight += 1

    def settle_if_idle(doc: _Doc) -> None:
        if doc.outstanding == 0 and not doc.done:
            doc.done = True
            ready.append(doc)

    def fail(doc: _Doc, reason: str, message: str) -> None:
        if doc.failure is None and not doc.done:
            doc.failure = (reason, message[:_MAX_MESSAGE])
            log.info("document %s failed: %s: %.300s", doc.row["doc_id"], reason, message)
        settle_if_idle(doc)

    def dispatch() -> None:
        nonlocal task_counter
        while tasks and pool.idle_slots():
            index, start = tasks.popleft()
            doc = docs[index]
            if doc.failure is not None:  # another chunk already failed the document
                doc.outstanding -= 1
                settle_if_idle(doc)
                continue
            task_counter += 1
            count = params.worker.chunk_pages
            cpu = _cpu_budget(params, count if doc.page_count is None else min(count, doc.page_count - start))
            task = {
                "task_id": task_counter,
                "path": str(doc.path),
                "start": start,
                "count": count,
                "blob_path": str(workdir / f"{index}-{start}.bin"),
                "params": params.model_dump(mode="json"),
                "cpu_limit_s": cpu,
                "wall_timeout_s": _wall_budget(cpu),
            }
            task_docs[task_counter] = (index, start)
            pool.submit(task, task["wall_timeout_s"])

    def on_answer(task: dict, answer: dict) -> None:
        index, start = task_docs.pop(task["task_id"])
        doc = docs[index]
        doc.outstanding -= 1
        if not answer.get("ok"):
            fail(doc, answer.get("reason", "crashed"), answer.get("message", "unknown worker failure"))
            return
        if doc.failure is not None:
            settle_if_idle(doc)
            return
        page_count = int(answer["page_count"])
        if start == 0:
            doc.page_count = page_count
            # Remaining chunks jump the queue: a started document finishes first, which
            # frees its disk and memory before new documents start.
            rest = list(range(params.worker.chunk_pages, page_count, params.worker.chunk_pages))
            for chunk_start in reversed(rest):
                tasks.appendleft((index, chunk_start))
            doc.outstanding += len(rest)
        elif page_count != doc.page_count:
            fail(doc, "corrupt", f"page count changed between opens ({doc.page_count} then {page_count})")
            return
        expected = list(range(start + 1, min(page_count, start + params.worker.chunk_pages) + 1))
        if [p["page_number"] for p in answer["pages"]] != expected:
            fail(doc, "crashed", f"worker returned the wrong pages for the chunk at page {start + 1}")
            return
        doc.chunks[start] = answer
        settle_if_idle(doc)

    def finish(doc: _Doc) -> None:
        nonlocal pages_done, in_flight, finished
        row = doc.row
        cleanup = [workdir / f"{doc.index}-{start}.bin" for start in set(doc.chunks) | {0}]
        if doc.temporary and doc.path is not None:
            cleanup.append(doc.path)
        if doc.failure is None and screen.needs_content:
            refused = screen.after_render(row, *_rendered_content(doc, workdir, screen.cfg.image_pages))
            if refused:
                doc.failure = refused
                log.info("document %s failed: %s: %.300s", row["doc_id"], *refused)
        if doc.failure is None:
            chunks = [(doc.chunks[s], workdir / f"{doc.index}-{s}.bin") for s in sorted(doc.chunks)]
            writer.submit(row["doc_id"], chunks, doc.page_count, cleanup)
            pages_done += doc.page_count
            documents.append(
                (
                    doc.index,
                    {
                        "doc_id": row["doc_id"],
                        "source_kind": row.get("source_kind"),
                        "source": row.get("source"),
                        "url": row.get("url"),
                        "date": row.get("date"),
                        "total_pages": doc.page_count,
                        "extra": _extra_text(row.get("extra")),
                        "sha256": screen.sha.get(row["doc_id"]),
                    },
                )
            )
        else:
            reason, message = doc.failure
            failures.append(
                (
                    doc.index,
                    {"doc_id": row["doc_id"], "source": row.get("source"), "reason": reason, "message": message},
                )
            )
            for path in cleanup:
                path.unlink(missing_ok=True)
        doc.chunks = {}
        in_flight -= 1
        finished += 1
        bar.update(1)
        bar.set_postfix(pages=pages_done, failed=len(failures), refresh=False)

    try:
        while True:
            while ready:
                finish(ready.popleft())
            if finished == len(docs):
                break
            start_fetches()  # workers start lazily with their first task
            dispatch()
            deadline = pool.next_deadline()
            timeout = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
            try:
                event = events.get(timeout=timeout)
            except queue.Empty:
                pool.expire()
                continue
            if event[0] == "fetched":
                doc = docs[event[1]]
                try:
                    doc.path, doc.temporary = event[2].result()
                except SeedFailure as failure:
                    fail(doc, failure.reason, failure.message)
                    continue
                except Exception as error:  # a fetcher bug must not take the shard down
                    fail(doc, "crashed", f"fetch raised {type(error).__name__}: {error}")
                    continue
                refused = screen.after_fetch(doc.row, doc.path)
                if refused:
                    fail(doc, *refused)
                    continue
                doc.outstanding = 1
                tasks.append((doc.index, 0))
            else:
                outcome = pool.handle(event)
                if outcome is not None:
                    on_answer(*outcome)
            pool.expire()
            writer.check()
    finally:
        bar.close()
        downloads.shutdown(wait=True, cancel_futures=True)
        pool.close()
        writer.close()

    documents = [row for _index, row in sorted(documents, key=lambda item: item[0])]
    failures = [row for _index, row in sorted(failures, key=lambda item: item[0])]
    # Accounting: every manifest row is exactly one seeded document or one failure.
    seeded = [d["doc_id"] for d in documents]
    failed = [f["doc_id"] for f in failures]
    expected = [row["doc_id"] for row in rows]
    if len(seeded) + len(failed) != len(expected) or sorted(seeded + failed) != sorted(expected):
        raise RuntimeError(
            f"seed accounting broken: {len(seeded)} seeded + {len(failed)} failed != {len(expected)} rows"
        )
    if writer.writer.pages != sum(d["total_pages"] for d in documents):
        raise RuntimeError(
            f"seed accounting broken: {writer.writer.pages} page rows for {sum(d['total_pages'] for d in documents)} pages"
        )

    write_parquet_atomic(pa.Table.from_pylist(documents, schema=DOCUMENTS_SCHEMA), outputs["documents"])
    write_parquet_atomic(pa.Table.from_pylist(failures, schema=FAILURES_SCHEMA), outputs["failures"])
    by_reason = collections.Counter(f["reason"] for f in failures)
    return {
        "documents": len(documents),
        "failures": len(failures),
        "pages": writer.writer.pages,
        "failures_by_reason": dict(by_reason),
        "worker_restarts": pool.restarts,
    }
