"""Workflow directories against the fake OpenAI-compatible server (a test double) for the reliability tests: configs, snakemake calls, the double's counters (no tests here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from conftest import SAMPLE_PDF_DIR
from helpers.workflow import snakemake_cmd

KEY_ENV = "FAKE_LLM_KEY"


FAKE_KEY = "fake-key-reliability-5e0c4a91d27b"


ENV = {**os.environ, KEY_ENV: FAKE_KEY}


# 6 + 12 pages: small enough for seconds, enough rows to kill a job in the middle of its shard
SMALL = ("MVT_Rnews.pdf", "residual-shadings.pdf")


# + 15 pages: more rows for fault shares
LARGER = SMALL + ("zoo-faq.pdf",)


RUN_TIMEOUT = 600  # seconds: a hang guard for one snakemake call, generous for a loaded machine


def make_workdir(
    root: Path, pdfs: tuple[str, ...], stages: dict, base_urls: dict[str, str], documents_per_shard: int = 25
) -> Path:
    """A workflow directory: the PDFs, and a config whose models `base_urls` names (alias -> URL)."""
    pdf_dir = root / "pdfs"
    pdf_dir.mkdir(parents=True)
    for name in pdfs:
        (pdf_dir / name).write_bytes((SAMPLE_PDF_DIR / name).read_bytes())
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": str(pdf_dir)}}},
        "sharding": {"settings": {"documents_per_shard": documents_per_shard}},
        "seed": {"settings": {"dpi": 50}},
        "models": {
            alias: {"endpoint": {"base_url": url, "model": "fake-model", "api_key_env": KEY_ENV}}
            for alias, url in base_urls.items()
        },
        "stages": {"ocr": {"settings": {"engine": "pdf-text"}}, **stages},
        # what these tests check ends with the stage shards and the closing summary: no export
        # or report jobs (the fake-server workflow test runs those)
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def classify_settings(
    model: str = "fake", request_timeout_s: float = 30.0, concurrency: dict | None = None, retry: dict | None = None
) -> dict:
    return {
        "model": model,
        "run": {
            "request_timeout_s": request_timeout_s,
            "concurrency": concurrency or {},
            # quick retries: the tests wait for them
            "retry": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, **(retry or {})},
        },
    }


def snakemake(workdir: Path, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, timeout=timeout, env=ENV)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def server_root(base_url: str) -> str:
    return base_url.rsplit("/v1", 1)[0]


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(f"{server_root(base_url)}/_stats", timeout=10) as response:
        return json.loads(response.read())


def server_post(base_url: str, path: str, payload: dict | None = None) -> None:
    request = urllib.request.Request(
        f"{server_root(base_url)}{path}",
        data=json.dumps(payload or {}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def rows_by_id(path: Path) -> dict[str, dict]:
    rows = pq.read_table(path).to_pylist()
    by_id = {r["row_id"]: r for r in rows}
    assert len(by_id) == len(rows), f"{path}: duplicate row ids"
    return by_id


def page_count(workdir: Path, shard: str = "00000") -> int:
    return pq.read_table(workdir / "results" / "seed" / shard / "pages.parquet", columns=["doc_id"]).num_rows


def journal_rows(path: Path) -> list[str]:
    """Row ids of the complete lines of a journal (the header and a torn last line excluded)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[1:-1]  # after the split the last item is "" or torn
    ids = []
    for line in lines:
        try:
            ids.append(json.loads(line)["row_id"])
        except ValueError:
            break
    return ids


def assert_no_key_leak(workdir: Path) -> None:
    """The key in no log, output, journal or Snakemake metadata (.snakemake/ included)."""
    leaks = [
        str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()
    ]
    assert leaks == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
