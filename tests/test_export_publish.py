"""Publishing the Hub folder, without network: the dry run, and a real `HfApi.upload_folder` against a
local stand-in for the Hub (a small HTTP server speaking the endpoints huggingface_hub calls:
create repo, validate README YAML, preupload, commit)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from pathlib import Path

import pytest
from aiohttp import web

from longdoc_sdg.export.publish import PublishError, folder_files, publish_folder
from longdoc_sdg.io import setup_job_logging

TOKEN = "hf_standin_secret_token_123"


def make_folder(root: Path) -> Path:
    folder = root / "hub"
    (folder / "single_page_qa").mkdir(parents=True)
    (folder / "README.md").write_text(
        "---\nlicense: other\nconfigs:\n- config_name: single_page_qa\n"
        "  data_files: single_page_qa/train-*.parquet\n---\n# card\n"
    )
    (folder / "single_page_qa" / "train-00000-of-00001.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 8 + b"PAR1")
    return folder


class HubStandIn:
    """A local stand-in for the Hub's upload API (TEST DOUBLE): stores committed files in memory."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.auth: list[str | None] = []
        self.commits: list[dict] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/repos/create", self.create)
        app.router.add_post("/api/validate-yaml", self.validate)
        app.router.add_post("/api/datasets/{ns}/{name}/preupload/{rev}", self.preupload)
        app.router.add_post("/api/datasets/{ns}/{name}/commit/{rev}", self.commit)
        return app

    def _auth(self, request):
        self.auth.append(request.headers.get("authorization"))
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    async def create(self, request):
        if not self._auth(request):
            return web.json_response({"error": "Invalid credentials"}, status=401)
        body = await request.json()
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}" if "/" not in body["name"] else body["name"]
        self.repos[repo_id] = body
        return web.json_response({"url": f"{self.url}/datasets/{repo_id}", "name": repo_id})

    async def validate(self, request):
        body = await request.json()
        assert body["content"].startswith("---")
        return web.json_response({"errors": [], "warnings": []})

    async def preupload(self, request):
        if not self._auth(request):
            return web.json_response({"error": "Invalid credentials"}, status=401)
        body = await request.json()
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in body["files"]
        ]
        return web.json_response({"files": files, "commitOid": "0" * 40})

    async def commit(self, request):
        if not self._auth(request):
            return web.json_response({"error": "Invalid credentials"}, status=401)
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        lines = [json.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        stored = self.files.setdefault(repo_id, {})
        for item in lines:
            if item["key"] == "file":
                stored[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        self.commits.append({"repo_id": repo_id, "revision": request.match_info["rev"], "header": header})
        oid = f"{len(self.commits):040x}"
        return web.json_response(
            {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
        )


@pytest.fixture
def standin():
    hub = HubStandIn()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}

    async def start():
        runner = web.AppRunner(hub.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        hub.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield hub
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_dry_run_records_what_would_be_uploaded(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = make_folder(tmp_path)
    log_path = tmp_path / "publish.log"
    setup_job_logging(str(log_path))
    try:
        record = publish_folder(
            str(folder),
            {
                "repo_id": "org/longdoc",
                "private": True,
                "dry_run": True,
                "endpoint": "http://127.0.0.1:9",
            },  # nothing listens there
            str(tmp_path / "publish.json"),
        )
    finally:
        logging.getLogger("longdoc_sdg").handlers.clear()
    saved = json.loads((tmp_path / "publish.json").read_text())
    assert saved == record and saved["dry_run"] is True and saved["repo_id"] == "org/longdoc" and saved["private"]
    assert [f["path"] for f in saved["files"]] == ["README.md", "single_page_qa/train-00000-of-00001.parquet"]
    assert saved["files"] == folder_files(str(folder))
    assert saved["total_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    text = log_path.read_text()
    assert "would upload single_page_qa/train-00000-of-00001.parquet" in text


def test_upload_needs_a_repo_and_a_token(tmp_path, monkeypatch):
    folder = make_folder(tmp_path)
    with pytest.raises(PublishError, match="repo_id"):
        publish_folder(str(folder), {"dry_run": True}, str(tmp_path / "r.json"))
    monkeypatch.delenv("MY_HUB_TOKEN", raising=False)
    with pytest.raises(PublishError, match="MY_HUB_TOKEN"):
        publish_folder(str(folder), {"repo_id": "org/x", "token_env": "MY_HUB_TOKEN"}, str(tmp_path / "r.json"))
    with pytest.raises(PublishError, match="README"):
        publish_folder(str(tmp_path), {"repo_id": "org/x", "dry_run": True}, str(tmp_path / "r.json"))


def test_upload_folder_to_a_local_hub_stand_in(tmp_path, monkeypatch, standin):
    folder = make_folder(tmp_path)
    monkeypatch.setenv("MY_HUB_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    log_path = tmp_path / "publish.log"
    setup_job_logging(str(log_path))
    try:
        record = publish_folder(
            str(folder),
            {
                "repo_id": "org/longdoc-qa",
                "private": True,
                "token_env": "MY_HUB_TOKEN",
                "endpoint": standin.url,
                "commit_message": "test upload",
            },
            str(tmp_path / "publish.json"),
        )
        logging.getLogger("longdoc_sdg").info("the token is %s", TOKEN)  # the redactor must catch it
    finally:
        logging.getLogger("longdoc_sdg").handlers.clear()
    created = standin.repos["org/longdoc-qa"]
    # huggingface_hub sends `private: true` (older) or `visibility: private` (newer)
    assert created.get("private") is True or created.get("visibility") == "private"
    assert standin.repos["org/longdoc-qa"]["type"] == "dataset"
    uploaded = standin.files["org/longdoc-qa"]
    assert uploaded == {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert standin.commits[0]["header"]["summary"] == "test upload"
    assert record["commit_oid"] == f"{1:040x}" and record["commit_url"].startswith(standin.url)
    assert all(a == f"Bearer {TOKEN}" for a in standin.auth)
    assert TOKEN not in (tmp_path / "publish.json").read_text()
    assert TOKEN not in log_path.read_text() and "***" in log_path.read_text()
