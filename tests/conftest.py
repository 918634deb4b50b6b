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


def copy_pdfs(pdfs, folder: Path) -> Path:
    """A source folder for a workflow run: the given PDFs copied under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for pdf in pdfs:
        shutil.copy(pdf, folder / pdf.name)
    return folder


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


def _vllm_server_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("longdoc_vllm_server", REPO / "tests" / "vllm" / "server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_vlm():
    """(python of the vLLM venv, dir of the tiny random-weight VLM built on the spot, server module)."""
    import subprocess

    server = _vllm_server_module()
    python = server.vllm_python()
    require(python is not None, f"vLLM venv not found at {server.vllm_venv()}: run bash tests/vllm/install.sh")
    model_dir = Path(os.environ.get("LONGDOC_TINY_VLM_DIR", server.vllm_venv() / "tiny-vlm"))
    built = subprocess.run(
        [python, str(REPO / "tests" / "vllm" / "build_tiny_vlm.py"), str(model_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return python, model_dir, server


@pytest.fixture(scope="session")
def slurm_cluster():
    """The real local Slurm (ci/slurm/up.sh) must be up."""
    import subprocess

    ok = (
        shutil.which("sinfo") is not None
        and subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    )
    require(ok, "no Slurm cluster answers: run bash ci/slurm/up.sh")
    return True


# ---- The session's one real vLLM server (tests/vllm/server.py) with the tiny model ----
# Shared by test_vllm_real.py and test_workflow_vllm.py: one boot instead of one per module.
# Its max_model_len is small on purpose (a sixth of a real deployment's): whole-document requests
# with a realistic max_tokens overflow it at full resolution (the context-budget test), while the
# stages' prompts (about 3,000 tokens by the budget's byte bound, fewer by its count) and their
# 1,500-token replies still fit.
TINY_VLLM_SERVED = "tiny-vlm"
TINY_VLLM_KEY = "vllm-test-key-3f9a61c2d7e84b05"
TINY_VLLM_MAX_MODEL_LEN = 8192
TINY_VLLM_MAX_IMAGES = 8


class TinyVllm:
    """A running server: `url` without /v1, `base_url` with it (what endpoints take)."""

    def __init__(self, url: str, model_dir: Path, log_path: Path):
        self.url = url
        self.base_url = url + "/v1"
        self.model_dir = model_dir
        self.log_path = log_path
        self.served = TINY_VLLM_SERVED
        self.api_key = TINY_VLLM_KEY
        self.max_model_len = TINY_VLLM_MAX_MODEL_LEN
        self.max_images = TINY_VLLM_MAX_IMAGES


# The server's process while it runs, so the hook below can stop it after its last user.
_TINY_VLLM_RUNNING: list = []


def _uses_tiny_vllm(item) -> bool:
    return "tiny_vllm" in getattr(item, "fixturenames", ())


# Under pytest-xdist (`-n 2 --dist loadgroup`, the README's test command) the real-service tests
# run one after another on one worker (they load both cores, share the one served tiny vLLM and
# the one Slurm cluster) while the other worker takes the rest; the tests of the shared
# fake-server run form a group of their own so that run is made once.
REAL_SERVICE_FIXTURES = {"tiny_vlm", "tiny_vllm", "slurm_cluster"}


def _uses_real_services(item) -> bool:
    return bool(
        REAL_SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
        or item.get_closest_marker("vllm")
        or item.get_closest_marker("slurm")
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(session, config, items):
    """The real-service tests go first (the longest chain starts at once), and among them the
    served tiny vLLM's users back to back, so that server lives only that long."""
    real = [item for item in items if _uses_real_services(item)]
    real.sort(key=_uses_tiny_vllm, reverse=True)  # stable: users first, in collection order
    chosen = set(real)
    rest = [item for item in items if item not in chosen]
    for item in real:
        item.add_marker(pytest.mark.xdist_group("real_services"))
    for item in rest:
        if "fake_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("fake_run"))
    items[:] = real + rest


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _TINY_VLLM_RUNNING and _uses_tiny_vllm(item) and (nextitem is None or not _uses_tiny_vllm(nextitem)):
        server, proc = _TINY_VLLM_RUNNING.pop()
        server.stop_server(proc)


@pytest.fixture(scope="session")
def tiny_vllm(tiny_vlm, tmp_path_factory):
    python, model_dir, server = tiny_vlm
    log_dir = tmp_path_factory.mktemp("vllm")
    for attempt in (1, 2):
        # free_port() can race with another process taking the port: retry once
        log_path = log_dir / f"server-{attempt}.log"
        port = server.free_port()
        proc = server.start_vllm_server(
            python,
            model_dir,
            port,
            TINY_VLLM_SERVED,
            api_key=TINY_VLLM_KEY,
            log_path=log_path,
            reasoning_parser="qwen3",
            max_model_len=TINY_VLLM_MAX_MODEL_LEN,
            max_images=TINY_VLLM_MAX_IMAGES,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            server.wait_ready(url, TINY_VLLM_SERVED, proc, timeout=900, api_key=TINY_VLLM_KEY, log_path=log_path)
            break
        except RuntimeError as exc:
            server.stop_server(proc)
            if attempt == 2 or "address already in use" not in str(exc).lower():
                raise
        except BaseException:
            server.stop_server(proc)
            raise
    _TINY_VLLM_RUNNING.append((server, proc))
    try:
        yield TinyVllm(url, model_dir, log_path)
    finally:
        if (server, proc) in _TINY_VLLM_RUNNING:  # not stopped by the hook yet
            _TINY_VLLM_RUNNING.remove((server, proc))
            server.stop_server(proc)


# ---- The finished fake-server workflow run shared across test modules (tests/helpers/fake_run.py).


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory, real_pdfs):
    from helpers.fake_run import start_fake_run

    run = start_fake_run(tmp_path_factory.mktemp("fake_run"), real_pdfs)
    yield run
    run.server.stop()
