"""Source screening across shards: each document is seeded once, and never a benchmark's.

Two jobs, so that a decision can look at every shard before any shard renders:
1. `fingerprint_shard` (one job per shard): for each local document, the sha256 of its bytes and
   its text / first-page fingerprint (the one decontamination uses: MinHash of word shingles,
   perceptual hashes of the first pages), computed in the sandboxed seed workers.
2. `screen_sources` (one job over all shards): walks the shards in order, documents in manifest
   order, and excludes a document that matches a benchmark (`contaminated`) or a document kept
   before it (`duplicate`: same bytes, near-duplicate text, or for a scan without any text the
   same page count and first pages), naming the match.

The seed job of a shard reads the exclusions and turns each into a failure row before fetching.
Decisions depend only on a document and those before it, so adding documents (new shards at
the end of the manifest) never changes a decision about an existing shard: the seed rule takes
the exclusions as `ancient()` and finished shards are not reseeded.

Downloaded documents (URL and FinePDFs rows) are not fingerprinted here, that would download
them twice: they are compared by sha256 within their shard as they arrive (SeedScreen).
"""

from __future__ import annotations

import collections
import queue
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import get_logger, write_parquet_atomic
from .config import load_params
from .decontaminate import BenchmarkIndex, file_sha256, hamming, load_config, load_index
from .errors import SeedFailure
from .fetch import materialise
from .pool import WorkerPool

log = get_logger("seed.dedup")

FINGERPRINTS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("sha256", pa.string()),  # null: not screened across shards (a download, or unreadable)
        ("pages", pa.int64()),
        ("words", pa.int64()),
        ("minhash", pa.list_(pa.uint64())),
        ("image_hashes", pa.list_(pa.string())),
        ("note", pa.string()),  # why a document has no (content) fingerprint
    ]
)
EXCLUSIONS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("shard", pa.string()),
        ("reason", pa.string()),  # contaminated | duplicate
        ("message", pa.string()),
        ("kept_doc_id", pa.string()),  # the document a duplicate duplicates (null: contaminated)
    ]
)


def _budget(params) -> tuple[float, float]:
    # One render chunk's budget: extracting the text of a document costs far less than that.
    cpu = params.worker.cpu_seconds_base + params.worker.cpu_seconds_per_page * params.worker.chunk_pages
    return cpu, 2 * cpu + 30


def fingerprint_shard(manifest_path: str, output: str, seed_params: dict, decontamination: dict, threads: int) -> dict:
    """Write one fingerprint row per manifest row of a shard (in manifest order)."""
    params = load_params(seed_params)
    cfg = load_config(decontamination)
    rows = pq.read_table(manifest_path).to_pylist()
    found = [
        {"doc_id": r["doc_id"], "source": r.get("source"), "url": r.get("url"), "sha256": None, "note": None}
        for r in rows
    ]
    todo = collections.deque()
    for index, row in enumerate(rows):
        if row.get("source_kind") != "local":
            found[index]["note"] = "downloaded: compared within its shard only"
            continue
        try:
            path, _temporary = materialise(row, params, ".")  # local: checks the entry, reads nothing else
        except SeedFailure as failure:
            found[index]["note"] = f"{failure.reason}: {failure.message}"  # the seed reports it
            continue
        found[index]["sha256"] = file_sha256(path)
        todo.append((index, path))

    cpu, wall = _budget(params)
    events: queue.Queue = queue.Queue()
    pool = WorkerPool(max(1, threads), params.worker.memory_mb, events)
    running: dict[int, int] = {}  # task id -> row index
    task_id = 0
    try:
        while todo or running:
            while todo and pool.idle_slots():
                index, path = todo.popleft()
                task_id += 1
                running[task_id] = index
                task = {
                    "task_id": task_id,
                    "kind": "fingerprint",
                    "path": str(path),
                    "params": params.model_dump(mode="json"),
                    "decontamination": cfg.model_dump(mode="json"),
                    "cpu_limit_s": cpu,
                    "wall_timeout_s": wall,
                }
                pool.submit(task, wall)
            deadline = pool.next_deadline()
            timeout = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
            try:
                event = events.get(timeout=timeout)
            except queue.Empty:
                pool.expire()
                continue
            outcome = pool.handle(event)
            pool.expire()
            if outcome is None:
                continue
            task, answer = outcome
            row = found[running.pop(task["task_id"])]
            if answer.get("ok"):
                row.update(answer["fingerprint"], pages=answer["page_count"])
            else:  # still screened by its bytes; the seed reports the document's problem
                row["note"] = f"{answer.get('reason', 'crashed')}: {str(answer.get('message'))[:300]}"
    finally:
        pool.close()

    write_parquet_atomic(pa.Table.from_pylist(found, schema=FINGERPRINTS_SCHEMA), output)
    screened = sum(1 for r in found if r["sha256"])
    log.info(
        "fingerprinted %d of %d documents (%d by content)",
        screened,
        len(found),
        sum(1 for r in found if r.get("words")),
    )
    return {"documents": len(found), "screened": screened}


def _fingerprint(row: dict) -> dict:
    return {"words": row["words"] or 0, "minhash": row["minhash"], "image_hashes": row["image_hashes"] or []}


class _ImageOnlyIndex:
    """Kept documents without any text layer, by page count: a scan is a near-duplicate of
    another when both have as many pages and their first pages hash alike. Documents with a
    little text are left to sha256: mostly white pages hash alike whatever their few words."""

    def __init__(self, max_distance: int):
        self.max_distance = max_distance
        self.by_pages: dict[int, list[tuple[str, list[int]]]] = collections.defaultdict(list)

    @staticmethod
    def _key(row: dict) -> tuple[int, list[int]] | None:
        if row["words"] != 0 or not row["image_hashes"] or not row["pages"]:
            return None
        return row["pages"], [int(h) for h in row["image_hashes"]]

    def match(self, row: dict) -> tuple[str, str] | None:
        key = self._key(row)
        if key is None:
            return None
        pages, hashes = key
        for doc_id, theirs in self.by_pages[pages]:
            distances = [hamming(a, b) for a, b in zip(hashes, theirs)]
            if distances and max(distances) <= self.max_distance:
                return doc_id, f"{pages} pages without text, first {len(distances)} within {max(distances)} bits"
        return None

    def add(self, row: dict) -> None:
        key = self._key(row)
        if key is not None:
            self.by_pages[key[0]].append((row["doc_id"], key[1]))


def screen_sources(fingerprint_tables: list[str], output: str, decontamination: dict, cache_dir: str) -> dict:
    """Write the exclusions of every shard. `fingerprint_tables`: one per shard, in shard order
    (the file's parent folder is the shard name)."""
    cfg = load_config(decontamination)
    benchmarks = load_index(cfg, cache_dir) if cfg.enabled else None
    kept = BenchmarkIndex(cfg)  # the documents kept so far (bytes and text), indexed like a benchmark
    kept_scans = _ImageOnlyIndex(cfg.image_max_distance)
    kept_source: dict[str, str] = {}
    exclusions = []
    documents = 0
    for path in fingerprint_tables:
        shard = Path(path).parent.name
        for row in pq.read_table(path).to_pylist():
            if not row["sha256"]:
                continue
            documents += 1
            fp = _fingerprint(row)
            if benchmarks is not None:
                match = (
                    benchmarks.match_name(row["url"], row["source"])
                    or benchmarks.match_sha(row["sha256"])
                    or benchmarks.match_fingerprint(fp)
                )
                if match:
                    exclusions.append((row, shard, "contaminated", match.message(), None))
                    continue
            text_only = {**fp, "image_hashes": []}
            same = kept.match_sha(row["sha256"])
            near = None if same else kept.match_fingerprint(text_only)
            scan = None if same or near else kept_scans.match(row)
            if same or near or scan:
                other = (same or near).file if same or near else scan[0]
                if same:
                    message = f"same content (sha256 {row['sha256'][:16]}) as document {other} ({kept_source[other]})"
                elif near:
                    message = f"near-duplicate text of document {other} ({kept_source[other]}): {near.detail}"
                else:
                    message = f"same first pages as document {other} ({kept_source[other]}): {scan[1]}"
                exclusions.append((row, shard, "duplicate", message + ", which is kept", other))
                continue
            kept.add("source", row["doc_id"], row["sha256"], text_only)
            kept_scans.add(row)
            kept_source[row["doc_id"]] = row["source"]
    table = pa.Table.from_pylist(
        [
            {"doc_id": row["doc_id"], "shard": shard, "reason": reason, "message": message, "kept_doc_id": kept_id}
            for row, shard, reason, message, kept_id in exclusions
        ],
        schema=EXCLUSIONS_SCHEMA,
    )
    write_parquet_atomic(table, output)
    by_reason = dict(collections.Counter(reason for _row, _shard, reason, _message, _kept in exclusions))
    log.info(
        "screened %d documents of %d shard(s): excluded %s",
        documents,
        len(fingerprint_tables),
        by_reason or "none",
    )
    return {"documents": documents, "excluded": by_reason}


def load_exclusions(path: str, doc_ids) -> dict[str, tuple[str, str]]:
    """The exclusions (reason, message) of the given documents, by doc_id."""
    wanted = set(doc_ids)
    table = pq.read_table(path, columns=["doc_id", "reason", "message"])
    return {r["doc_id"]: (r["reason"], r["message"]) for r in table.to_pylist() if r["doc_id"] in wanted}


def load_shard_sha(path: str) -> dict[str, str]:
    """doc_id -> sha256 of the documents a shard's fingerprint table hashed."""
    table = pq.read_table(path, columns=["doc_id", "sha256"])
    return {r["doc_id"]: r["sha256"] for r in table.to_pylist() if r["sha256"]}
