"""The finished workflow run shared by the fake-server workflow tests (no tests here).

One Snakemake run of every stage, the judge, verify, export, publish (dry run) and the report,
on three small real PDFs in two shards, against `ExportFakeServer` (the project's FAKE
OpenAI-compatible server, a TEST DOUBLE, with replies shaped for the QA stages) behind an API
key. test_workflow_fake_server, test_export_workflow and test_workflow read it; a test that
runs jobs on it works on `copy()` (a directory copy is far cheaper than another run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from helpers.export_run import ExportFakeServer
from helpers.workflow import planned_jobs, snakemake_cmd
from longdoc_sdg.registry import model_stages

FAKE_KEY = "fake-key-7c1d0f8e2b9a4c36"
KEY_VARIABLE = "FAKE_LLM_KEY"
# Small real PDFs (2, 8 and 11 pages), two documents per shard: shards 00000 and 00001.
PDF_NAMES = ("xts-faq.pdf", "zoo-design.pdf", "zoo-quickref.pdf")
SHARDS = ("00000", "00001")
# The QA stages the verify stage checks in the shared run.
VERIFIED = ("text_qa", "visual_qa")
MIN_JUDGE_SCORE = 0.5


def run_config(base_url: str) -> dict:
    fast = {"max_attempts": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    stages = {s: {"model": "fake", "settings": {"num_records": 6}, "run": {"retry": fast}} for s in model_stages()}
    stages["ocr"] = {"settings": {"engine": "pdf-text"}}
    for stage, n in (("text_qa", 5), ("visual_qa", 4), ("windowed_qa", 4), ("whole_document_qa", 2)):
        stages[stage]["settings"]["num_records"] = n
    stages["verify"]["enabled"] = True
    stages["verify"]["settings"]["verify_stages"] = list(VERIFIED)
    endpoint = {"base_url": base_url, "model": "fake-model", "api_key_env": KEY_VARIABLE}
    return {
        "results_dir": "results",
        "source": {"settings": {"kind": "local", "local": {"path": "pdfs"}}},
        "sharding": {"settings": {"documents_per_shard": 2}},
        "seed": {"settings": {"dpi": 40}},
        "models": {"fake": {"endpoint": endpoint}},
        "stages": stages,
        "export": {
            "settings": {
                "filters": {"min_judge_score": MIN_JUDGE_SCORE},
                "split": {"validation_fraction": 0.5},
            }
        },
        "publish": {"enabled": True, "settings": {"dry_run": True, "repo_id": "org/longdoc-test", "private": True}},
    }


@dataclass(frozen=True)
class FakeRun:
    dir: Path
    server: ExportFakeServer
    env: dict
    config: dict
    output: str  # the console of the run (stdout + stderr)
    planned: dict  # its Job stats table: rule -> jobs

    @property
    def results(self) -> Path:
        return self.dir / "results"

    def snakemake(
        self, *args: str, configfile: Path | None = None, env: dict | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        cmd = snakemake_cmd(self.dir, *args, configfile=configfile)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or self.env)

    def changed_config(self, change: Callable[[dict], None], path: Path) -> Path:
        """This run's config changed by `change(config)`, written to `path`."""
        config = yaml.safe_load((self.dir / "config.yaml").read_text())
        change(config)
        path.write_text(yaml.safe_dump(config))
        return path

    def copy(self, dest: Path) -> FakeRun:
        """The run's directory copied to `dest` (times kept, so it is as finished as this one)."""
        shutil.copytree(self.dir, dest, symlinks=True)
        return replace(self, dir=dest)


def start_fake_run(workdir: Path, real_pdfs: list[Path]) -> FakeRun:
    """Start the server, then run the workflow and its report in `workdir`; stop the server
    with `run.server.stop()`."""
    by_name = {p.name: p for p in real_pdfs}
    missing = [name for name in PDF_NAMES if name not in by_name]
    assert not missing, f"real PDFs missing: {missing} (ci/fetch_real_pdfs.sh fetches them)"
    (workdir / "pdfs").mkdir(parents=True)
    for name in PDF_NAMES:
        shutil.copy(by_name[name], workdir / "pdfs" / name)
    # consistent_share 0.5: verify's re-answers agree with about half of the generated
    # answers (which ones is fixed by the questions), so the export's verify filter has work.
    server = ExportFakeServer(reasoning=True, api_key=FAKE_KEY, consistent_share=0.5)
    server.start()
    try:
        config = run_config(server.base_url)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        run = FakeRun(workdir, server, {**os.environ, KEY_VARIABLE: FAKE_KEY}, config, "", {})
        # The manifest first: the run's Job stats then list every per-shard job.
        for args in (("results/manifest/index.json",), (), ("--report", "report.html")):
            result = run.snakemake(*args)
            assert result.returncode == 0, f"snakemake {args}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
            if not args:
                output = result.stdout + result.stderr
                run = replace(run, output=output, planned=planned_jobs(output))
        return run
    except BaseException:
        server.stop()
        raise
