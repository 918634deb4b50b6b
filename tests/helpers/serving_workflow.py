"""The serving workflow tests' shared pieces: a seeded template of three shards, the fake
vLLM deployment (tests/deployments/fake-vllm.yaml, a TEST DOUBLE standing in for vLLM),
snakemake calls under the local profile and checks of what a run leaves behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from conftest import REPO
from helpers.workflow import snakemake_cmd
from pdf_factory import numbered_page_pdfs

DEPLOYMENT = "fake-vllm"
SERVED = "fake-vllm-model"
# Pages per generated document: documents_per_shard=1 gives shards of these sizes. Keep three
# shards on two cores: the third client starts only once another is done, so requests still
# arrive after a late replica joins (with two shards every request is queued at the start).
DOC_PAGES = (2, 3, 14)
OTHER_STAGES = ("text_qa", "classify", "visual_qa", "single_page_qa", "windowed_qa", "whole_document_qa", "judge")


def snakemake(workdir: Path, *args: str, configfile: str = "config.yaml", timeout: float = 300):
    cmd = snakemake_cmd(workdir, *args, configfile=workdir / configfile, profile="local")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def write_config(workdir: Path, pdf_dir: Path, name: str = "config.yaml", **fake_overrides) -> Path:
    stages = {stage: {"enabled": False} for stage in OTHER_STAGES}
    stages["ocr"] = {"model": "served", "settings": {"engine": "nemotron-parse", "max_tokens": 64}}
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "sharding": {"settings": {"documents_per_shard": 1}},
        "seed": {"settings": {"dpi": 30}},
        "models": {"served": {"deployment": DEPLOYMENT}},
        "stages": stages,
        "serving": {
            "enabled": True,
            "run": {
                "launcher": "auto",
                "deployments_dir": str(REPO / "tests" / "deployments"),
                "overrides": {DEPLOYMENT: fake_overrides} if fake_overrides else {},
            },
        },
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


def server_processes(workdir: Path) -> list[str]:
    """Serve wrappers and fake servers started for this workdir (their cwd is inside it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if ("fake_openai_server" in cmdline or "longdoc_sdg.serve" in cmdline) and (
            cwd.startswith(str(workdir)) or str(workdir) in cmdline
        ):
            found.append(f"{entry.name} {cmdline}")
    return found


def serve_dir(workdir: Path) -> Path:
    return workdir / "results" / "serve"


def runtime_file(workdir: Path) -> Path:
    return serve_dir(workdir) / f"{DEPLOYMENT}.runtime.json"


def ocr_outputs(workdir: Path) -> dict[str, float]:
    return {p.stem: p.stat().st_mtime_ns for p in sorted((workdir / "results" / "ocr").glob("*.parquet"))}


def shard_pages(workdir: Path) -> dict[str, int]:
    pages = {}
    for path in sorted((workdir / "results" / "seed").glob("*/pages.parquet")):
        pages[path.parent.name] = pq.read_metadata(path).num_rows
    return pages


def assert_unpublished(workdir: Path) -> None:
    """No server left: no process, no runtime file or heartbeat, no teardown record."""
    assert server_processes(workdir) == []
    leftovers = [p.name for p in serve_dir(workdir).glob(f"{DEPLOYMENT}.runtime.json*")]
    assert leftovers == []
    assert list((serve_dir(workdir) / "servers").glob("*.json")) == []


class Watcher:
    """Polls the runtime file during a run: keeps the API key it finds, and optionally
    SIGKILLs the server's process group once `kill_when()` holds."""

    def __init__(self, workdir: Path, kill_when=None):
        self.workdir = workdir
        self.kill_when = kill_when
        self.keys: set[str] = set()
        self.published = False
        self.killed_pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                runtime = json.loads(runtime_file(self.workdir).read_text())
            except (OSError, ValueError):
                continue
            self.published = True
            self.keys.add(runtime["api_key"])
            if self.kill_when is not None and self.killed_pid is None and self.kill_when():
                bound_path = serve_dir(self.workdir) / "servers" / DEPLOYMENT / "replica-0" / "bound.json"
                server_pid = json.loads(bound_path.read_text())["server_pid"]
                # Like a crashed engine: the server's whole group, not the wrapper.
                os.killpg(server_pid, signal.SIGKILL)
                self.killed_pid = server_pid


def seed_serving_template(tmp_path_factory) -> tuple[Path, Path]:
    """A workdir with the seeded shards of DOC_PAGES; tests work on copies."""
    root = tmp_path_factory.mktemp("serving")
    pdf_dir = root / "pdfs"
    pdf_dir.mkdir()
    numbered_page_pdfs(pdf_dir, DOC_PAGES)
    template = root / "template"
    template.mkdir()
    write_config(template, pdf_dir)
    # The seed tables as targets: the manifest job (a checkpoint) lists the shards first.
    seeds = [f"results/seed/{shard:05d}/failures.parquet" for shard in range(len(DOC_PAGES))]
    result = snakemake(template, *seeds)
    assert result.returncode == 0, output_of(result)[-6000:]
    assert sorted(shard_pages(template).values()) == sorted(DOC_PAGES)
    return template, pdf_dir


def workdir_from(template: Path, tmp_path: Path, pdf_dir: Path, **fake_overrides) -> Path:
    workdir = tmp_path / "work"
    shutil.copytree(template, workdir, symlinks=True)
    write_config(workdir, pdf_dir, **fake_overrides)
    return workdir


def replica_bound(workdir: Path, index: int) -> dict:
    return json.loads((serve_dir(workdir) / "servers" / DEPLOYMENT / f"replica-{index}" / "bound.json").read_text())


def requests_of(stats_path: Path) -> int:
    try:
        return json.loads(stats_path.read_text())["requests"]
    except (OSError, ValueError):
        return 0


def job_logs(workdir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((workdir / "results" / "logs").rglob("*.log")))


def assert_every_page_once(workdir: Path) -> None:
    for shard, count in shard_pages(workdir).items():
        table = pq.read_table(workdir / "results" / "ocr" / f"{shard}.parquet")
        ids = table.column("row_id").to_pylist()
        assert len(ids) == count and len(set(ids)) == count, shard
        assert set(table.column("status").to_pylist()) == {"ok"}
