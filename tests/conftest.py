"""Shared fixtures. Tiers that need real services (vLLM, Slurm) skip outside CI with a reason
naming the script that sets them up, and FAIL under CI=true: a skipped real tier is no pass."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_PDF_DIR = Path(os.environ.get("LONGDOC_REAL_PDFS", REPO / "tests" / "data" / "real_pdfs"))
SAMPLE_PDF_DIR = REPO / "resources" / "sample_pdfs"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (outside CI) or fail (in CI) when a real component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_pdfs() -> list[Path]:
    """Real PDFs (R vignettes from Debian) fetched by ci/fetch_real_pdfs.sh."""
    pdfs = sorted(REAL_PDF_DIR.glob("*.pdf"))
    require(len(pdfs) >= 2, f"no real PDFs in {REAL_PDF_DIR}: run ci/fetch_real_pdfs.sh")
    return pdfs


@pytest.fixture(scope="session")
def sample_pdfs() -> list[Path]:
    pdfs = sorted(SAMPLE_PDF_DIR.glob("*.pdf"))
    assert pdfs, f"the sample PDFs shipped in {SAMPLE_PDF_DIR} are missing"
    return pdfs


@pytest.fixture(scope="session")
def snakemake_bin() -> str:
    path = shutil.which("snakemake")
    assert path, "snakemake is not on PATH: pip install -e '.[test]'"
    return path
