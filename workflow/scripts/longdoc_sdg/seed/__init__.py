"""Stage 01 (seed): PDFs -> page PNGs + text layer, documents, failures."""

from .config import DownloadParams, SeedParams, WarcParams, WorkerParams, load_params
from .errors import REASONS, SeedFailure
from .fetch import fetch_document
from .shard import run_seed_shard

__all__ = [
    "DownloadParams",
    "REASONS",
    "SeedFailure",
    "SeedParams",
    "WarcParams",
    "WorkerParams",
    "fetch_document",
    "load_params",
    "run_seed_shard",
]
