"""Keeping benchmark documents (and duplicates, with seed/dedup.py) out of the seed.

Each source document is checked against every configured benchmark folder, cheapest test first:
1. its normalised file name or URL,
2. the sha256 of its bytes,
3. near-duplicate text: MinHash over word shingles of the text layer, queried in an LSH index
   (`datasketch`), confirmed by the estimated Jaccard similarity,
4. for documents with (almost) no text layer: a perceptual hash (DCT) of the first pages.

The benchmark index is built once: each benchmark file's fingerprint is cached under its sha256
(and the settings that shape it), so a second seed job, a rerun, or a grown benchmark folder
fingerprints only files it has not seen. Questions are checked at export (`question_overlap`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..io import get_logger, write_text_atomic
from .errors import SeedFailure
from .fetch import check_local_row

log = get_logger("seed.decontaminate")

FINGERPRINT_VERSION = "1"
MINHASH_SCHEME = "affine32"  # named explicitly: cached hash values must be read back with it


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchmarkSource(_Strict):
    name: str = Field(description="Benchmark name, used in failure messages and drop reasons.")
    documents: str = Field(description="Folder holding the benchmark's PDFs (searched recursively).")
    samples: str | None = Field(
        None,
        description="The benchmark's questions (JSON list or JSON lines of objects with a `question` field, "
        "e.g. MMLongBench-Doc's samples.json); generated questions overlapping them are dropped at export.",
    )


class DecontaminationConfig(_Strict):
    benchmarks: list[BenchmarkSource] = Field(
        [], description="Benchmarks whose documents must not be seeded: [{name, documents, samples}]."
    )
    minhash_threshold: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity of word shingles at which a source document counts as a "
        "copy of a benchmark document (one page of ten removed leaves about 0.9).",
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: finer estimates, slower).")
    shingle_words: int = Field(5, ge=1, le=20, description="Words per shingle of the near-duplicate text test.")
    min_text_words: int = Field(
        50,
        ge=1,
        description="Documents with fewer words in their text layer are compared by the perceptual hash of "
        "their first pages instead of by text.",
    )
    image_pages: int = Field(3, ge=1, le=20, description="First pages compared by perceptual hash.")
    image_max_distance: int = Field(
        8, ge=0, le=64, description="Largest Hamming distance (of 64 bits) between two page hashes that still match."
    )
    question_ngram: int = Field(
        8,
        ge=3,
        le=50,
        description="Generated questions sharing a run of this many words with a benchmark question are "
        "dropped at export (reason `contaminated`).",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.benchmarks)


def load_config(value: dict | DecontaminationConfig | None) -> DecontaminationConfig:
    if isinstance(value, DecontaminationConfig):
        return value
    return DecontaminationConfig.model_validate(value or {})


# ---------------------------------------------------------------------------------------------
# Cheap keys.


def name_key(text: str | None) -> str | None:
    """A file name or URL reduced to its last path segment, lower case, letters and digits only:
    `Annual_Report-2023.PDF`, `https://x.org/a/annual%20report%202023.pdf?dl=1` -> annualreport2023."""
    if not text:
        return None
    path = urlsplit(text).path if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I) else text
    stem = unquote(path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
    stem = re.sub(r"\.pdf$", "", stem, flags=re.I)
    key = re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", stem).lower())
    return key or None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Text and image fingerprints.


def words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def minhash_of(tokens: list[str], cfg: DecontaminationConfig):
    from datasketch import MinHash

    k = cfg.shingle_words
    shingles = {" ".join(tokens[i : i + k]).encode("utf-8") for i in range(max(1, len(tokens) - k + 1))}
    minhash = MinHash(num_perm=cfg.num_perm, seed=1, scheme=MINHASH_SCHEME)
    minhash.update_batch(list(shingles))
    return minhash


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT32 = _dct_matrix(32)


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit DCT hash of a grayscale image: the 8x8 lowest frequencies of a 32x32 reduction
    (MuPDF's area-averaging scaler), each bit set when above their median. Robust to re-rendering,
    resolution and compression."""
    import pymupdf

    height, width = gray.shape
    pix = pymupdf.Pixmap(pymupdf.csGRAY, width, height, np.ascontiguousarray(gray, dtype=np.uint8).tobytes(), False)
    small = pymupdf.Pixmap(pix, 32, 32, None)
    reduced = np.frombuffer(small.samples, dtype=np.uint8).reshape(small.height, small.width).astype(np.float64)
    coeffs = (_DCT32 @ reduced @ _DCT32.T)[:8, :8].flatten()
    bits = coeffs > np.median(coeffs[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def png_gray(png: bytes) -> np.ndarray:
    """A PNG (made by our own renderer) as a grayscale array."""
    import pymupdf

    pix = pymupdf.Pixmap(png)
    if pix.n != 1 or pix.alpha:
        pix = pymupdf.Pixmap(pymupdf.csGRAY, pix)
    return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# ---------------------------------------------------------------------------------------------
# The benchmark index.


@dataclass
class Match:
    benchmark: str
    file: str
    how: str  # name | sha256 | text | image
    detail: str = ""

    def message(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"matches {self.file} of benchmark {self.benchmark} by {self.how}{extra}"


def _fingerprint_settings(cfg: DecontaminationConfig) -> dict:
    return {
        "version": FINGERPRINT_VERSION,
        "num_perm": cfg.num_perm,
        "shingle_words": cfg.shingle_words,
        "image_pages": cfg.image_pages,
    }


def fingerprint_pdf(path: Path, cfg: DecontaminationConfig) -> dict:
    """Words count, MinHash values and first-page hashes of one PDF (a benchmark file, or a source
    document inside a seed worker, which vets it first)."""
    import pymupdf

    with pymupdf.open(path, filetype="pdf") as doc:
        tokens = [w for page in doc for w in words(page.get_text())]
        hashes = []
        for page in list(doc)[: cfg.image_pages]:
            pix = page.get_pixmap(dpi=36, colorspace=pymupdf.csGRAY)
            gray = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width)
            hashes.append(perceptual_hash(gray))
    return {
        "words": len(tokens),
        "minhash": minhash_of(tokens, cfg).hashvalues.tolist() if tokens else None,
        "image_hashes": [str(h) for h in hashes],
    }


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class BenchmarkIndex:
    def __init__(self, cfg: DecontaminationConfig):
        from datasketch import MinHashLSH

        self.cfg = cfg
        self.by_name: dict[str, tuple[str, str]] = {}
        self.by_sha: dict[str, tuple[str, str]] = {}
        self.lsh = MinHashLSH(threshold=cfg.minhash_threshold, num_perm=cfg.num_perm)
        self.minhashes: dict[str, object] = {}
        self.images: list[tuple[str, str, list[int]]] = []
        self.where: dict[str, tuple[str, str]] = {}
        self.files = 0
        self.fingerprinted = 0  # files fingerprinted now (not read from the cache)

    def add(self, benchmark: str, rel: str, sha: str, fp: dict) -> None:
        from datasketch import LeanMinHash, MinHash

        self.files += 1
        key = f"{benchmark}\x1f{rel}"
        self.where[key] = (benchmark, rel)
        name = name_key(rel)
        if name:
            self.by_name.setdefault(name, (benchmark, rel))
        self.by_sha.setdefault(sha, (benchmark, rel))
        if fp["minhash"] is not None and fp["words"] >= self.cfg.min_text_words:
            minhash = LeanMinHash(
                MinHash(num_perm=self.cfg.num_perm, seed=1, hashvalues=fp["minhash"], scheme=MINHASH_SCHEME)
            )
            self.lsh.insert(key, minhash)
            self.minhashes[key] = minhash
        if fp["words"] < self.cfg.min_text_words and fp["image_hashes"]:
            self.images.append((benchmark, rel, [int(h) for h in fp["image_hashes"]]))

    # -- checks, cheapest first

    def match_name(self, *names: str | None) -> Match | None:
        for text in names:
            key = name_key(text)
            if key and key in self.by_name:
                benchmark, rel = self.by_name[key]
                return Match(benchmark, rel, "name", f"normalised name {key!r}")
        return None

    def match_sha(self, sha: str) -> Match | None:
        if sha in self.by_sha:
            benchmark, rel = self.by_sha[sha]
            return Match(benchmark, rel, "sha256", sha[:16])
        return None

    def match_content(self, text: str, first_pages_png: list[bytes]) -> Match | None:
        tokens = words(text)
        if len(tokens) >= self.cfg.min_text_words:
            return self._match_minhash(minhash_of(tokens, self.cfg))
        if not first_pages_png or not self.images:
            return None
        return self._match_images([perceptual_hash(png_gray(png)) for png in first_pages_png[: self.cfg.image_pages]])

    def match_fingerprint(self, fp: dict) -> Match | None:
        """The content tests on a stored fingerprint (fingerprint_pdf's dict)."""
        from datasketch import MinHash

        if fp.get("minhash") is not None and fp["words"] >= self.cfg.min_text_words:
            values = np.asarray(fp["minhash"], dtype=np.uint64)
            return self._match_minhash(
                MinHash(num_perm=self.cfg.num_perm, seed=1, hashvalues=values, scheme=MINHASH_SCHEME)
            )
        if fp["words"] < self.cfg.min_text_words and fp.get("image_hashes") and self.images:
            return self._match_images([int(h) for h in fp["image_hashes"]][: self.cfg.image_pages])
        return None

    def _match_minhash(self, minhash) -> Match | None:
        best = None
        for key in self.lsh.query(minhash):
            similarity = minhash.jaccard(self.minhashes[key])
            if similarity >= self.cfg.minhash_threshold and (best is None or similarity > best[0]):
                best = (similarity, key)
        if best:
            benchmark, rel = self.where[best[1]]
            return Match(
                benchmark, rel, "text", f"estimated Jaccard {best[0]:.2f} of {self.cfg.shingle_words}-word shingles"
            )
        return None

    def _match_images(self, hashes: list[int]) -> Match | None:
        for benchmark, rel, theirs in self.images:
            pairs = list(zip(hashes, theirs))
            if pairs and all(hamming(a, b) <= self.cfg.image_max_distance for a, b in pairs):
                worst = max(hamming(a, b) for a, b in pairs)
                return Match(benchmark, rel, "image", f"first {len(pairs)} page hash(es) within {worst} bits")
        return None


def _benchmark_files(bench: BenchmarkSource) -> list[tuple[str, Path]]:
    root = Path(bench.documents).expanduser()
    if not root.is_dir():
        raise ValueError(
            f"decontamination.settings.benchmarks[{bench.name}].documents: folder {str(root)!r} does not exist; "
            "point it at the benchmark's PDFs"
        )
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf"]
    return sorted(((p.relative_to(root).as_posix(), p) for p in found), key=lambda item: item[0])


def load_index(cfg: DecontaminationConfig, cache_dir: str | os.PathLike) -> BenchmarkIndex:
    """The index of every benchmark document; fingerprints come from the cache when their file's
    sha256 (and the fingerprint settings) are known there, else are computed and cached."""
    cache = Path(cache_dir)
    settings = _fingerprint_settings(cfg)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    index = BenchmarkIndex(cfg)
    # One job builds at a time: the others then find every fingerprint cached.
    with _lock(cache / ".lock"):
        for bench in cfg.benchmarks:
            for rel, path in _benchmark_files(bench):
                sha = file_sha256(path)
                entry = cache / tag / sha[:2] / f"{sha}.json"
                fp = None
                if entry.is_file():
                    try:
                        fp = json.loads(entry.read_text(encoding="utf-8"))
                    except ValueError:
                        fp = None
                if fp is None:
                    try:
                        fp = fingerprint_pdf(path, cfg)
                    except Exception as exc:  # an unreadable benchmark file still matches by name/hash
                        log.warning(
                            "benchmark %s: cannot read %s (%s); matched by name and hash only", bench.name, rel, exc
                        )
                        fp = {"words": 0, "minhash": None, "image_hashes": []}
                    write_text_atomic(entry, json.dumps(fp))
                    index.fingerprinted += 1
                index.add(bench.name, rel, sha, fp)
    log.info("benchmark index: %d files (%d fingerprinted now, the rest cached)", index.files, index.fingerprinted)
    return index


# ---------------------------------------------------------------------------------------------
# Question overlap (export).


def load_benchmark_questions(path: str | os.PathLike) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else data.get("samples") or data.get("data") or []
    except ValueError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [str(item["question"]) for item in items if isinstance(item, dict) and item.get("question")]


class QuestionIndex:
    """Word n-grams of a benchmark's questions; a generated question sharing one is contaminated."""

    def __init__(self, cfg: DecontaminationConfig):
        self.n = cfg.question_ngram
        self.grams: dict[tuple[str, ...], tuple[str, str]] = {}
        self.short: dict[tuple[str, ...], tuple[str, str]] = {}  # questions shorter than n words

        for bench in cfg.benchmarks:
            if not bench.samples:
                continue
            for question in load_benchmark_questions(bench.samples):
                tokens = tuple(words(question))
                if len(tokens) < self.n:
                    self.short.setdefault(tokens, (bench.name, question))
                for i in range(len(tokens) - self.n + 1):
                    self.grams.setdefault(tokens[i : i + self.n], (bench.name, question))

    def __bool__(self) -> bool:
        return bool(self.grams or self.short)

    def match(self, question: str | None) -> str | None:
        tokens = tuple(words(question or ""))
        if tokens in self.short:
            bench, theirs = self.short[tokens]
            return f"same question as benchmark {bench}: {theirs[:200]!r}"
        for i in range(len(tokens) - self.n + 1):
            hit = self.grams.get(tokens[i : i + self.n])
            if hit:
                return f"shares {self.n} words ({' '.join(tokens[i : i + self.n])!r}) with a question of benchmark {hit[0]}: {hit[1][:200]!r}"
        return None


# ---------------------------------------------------------------------------------------------
# The seed job's screen: one object, three checkpoints.


def _readable(row: dict) -> bool:
    """A local row whose file may be read now (never a refused entry, e.g. a link leaving the folder)."""
    try:
        return check_local_row(row).is_file()
    except SeedFailure:
        return False


class SeedScreen:
    """What the seed job asks before fetching, after fetching and after rendering a document.
    Each answer is None (go on) or a (reason, message) failure: `contaminated` or `duplicate`.

    `exclusions` (doc_id -> (reason, message)): the decisions of the cross-shard screen
    (seed/dedup.py), applied before fetching. Without them (a shard seeded on its own) local
    files are hashed up front in manifest order, so the kept copy is the first listed. Within a
    shard, the first document with a given sha256 is kept; downloads are compared as they arrive."""

    def __init__(
        self,
        cfg: DecontaminationConfig | dict | None,
        cache_dir: str | os.PathLike,
        rows: list[dict],
        exclusions: dict[str, tuple[str, str]] | None = None,
        known_sha: dict[str, str] | None = None,
    ):
        self.cfg = load_config(cfg)
        self.index = load_index(self.cfg, cache_dir) if self.cfg.enabled else None
        self.exclusions = exclusions
        self.owner: dict[str, str] = {}  # sha256 -> doc_id kept
        self.sha: dict[str, str] = dict(known_sha or {})  # doc_id -> sha256 (the screen's, not read again)
        for row in rows if exclusions is None else []:
            if row.get("source_kind") == "local" and _readable(row):
                sha = file_sha256(row["source"])
                self.sha[row["doc_id"]] = sha
                self.owner.setdefault(sha, row["doc_id"])

    def _contaminated(self, match: Match | None) -> tuple[str, str] | None:
        return None if match is None else ("contaminated", match.message())

    def before_fetch(self, row: dict) -> tuple[str, str] | None:
        if self.exclusions and row["doc_id"] in self.exclusions:
            return self.exclusions[row["doc_id"]]
        if self.index is None:
            return None
        return self._contaminated(self.index.match_name(row.get("url"), row.get("source")))

    def after_fetch(self, row: dict, path: str | os.PathLike) -> tuple[str, str] | None:
        doc_id = row["doc_id"]
        sha = self.sha.get(doc_id) or file_sha256(path)
        self.sha[doc_id] = sha
        if self.index is not None:
            found = self._contaminated(self.index.match_sha(sha))
            if found:
                return found
        kept = self.owner.setdefault(sha, doc_id)
        if kept != doc_id:
            return "duplicate", f"same content (sha256 {sha[:16]}) as document {kept}, which is seeded"
        return None

    def after_render(self, row: dict, text: str, first_pages_png: list[bytes]) -> tuple[str, str] | None:
        if self.index is None:
            return None
        return self._contaminated(self.index.match_content(text, first_pages_png))

    @property
    def needs_content(self) -> bool:
        return self.index is not None
