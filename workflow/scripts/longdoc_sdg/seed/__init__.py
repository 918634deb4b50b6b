"""Stage 01 (seed): PDFs -> page PNGs + text layer, documents, windows, failures."""

from .config import DownloadParams, SeedParams, WarcParams, WorkerParams, load_params
from .errors import REASONS, SeedFailure
from .fetch import fetch_document
from .shard import run_seed_shard
from .windows import make_windows, window_size_for, within_whole_document_limit

__all__ = [
    "DownloadParams",
    "REASONS",
    "SeedFailure",
    "SeedParams",
    "WarcParams",
    "WorkerParams",
    "fetch_document",
    "load_params",
    "make_windows",
    "run_seed_shard",
    "window_size_for",
    "within_whole_document_limit",
]
