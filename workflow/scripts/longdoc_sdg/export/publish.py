"""Upload the Hub-ready folder with `huggingface_hub` (`HfApi.create_repo` + `upload_folder`).

The token comes from the environment variable named in `publish.run.token_env` and is registered
with the log redactor; it never enters params, logs or the record. A dry run contacts nobody: it
lists what would be uploaded (path, size, sha256) in the record and the job log.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

from ..io import get_logger, register_secret
from .common import write_json_atomic

log = get_logger("export.publish")


class PublishError(RuntimeError):
    pass


def folder_files(folder: str) -> list[dict]:
    root = Path(folder)
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out.append(
            {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": digest.hexdigest()}
        )
    return out


def publish_folder(folder: str, params: dict, record_path: str) -> dict:
    """Upload `folder` as a dataset repo (or record what would be uploaded); returns the record.

    params: `publish.settings` and `publish.run` merged (repo_id, private, token_env, dry_run,
    endpoint, revision, commit_message).
    """
    from ..config import PublishParams

    settings = PublishParams.model_validate(params)
    if not settings.repo_id:
        raise PublishError(
            "publish.settings.repo_id is not set: name the target dataset repository (e.g. my-org/longdoc-qa)"
        )
    if not (Path(folder) / "README.md").is_file():
        raise PublishError(f"{folder} has no README.md: is it the Hub folder of the export?")
    files = folder_files(folder)
    record = {
        "repo_id": settings.repo_id,
        "repo_type": "dataset",
        "private": settings.private,
        "endpoint": settings.endpoint,
        "revision": settings.revision,
        "dry_run": settings.dry_run,
        "folder": str(folder),
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if settings.dry_run:
        log.info(
            "dry run: would upload %d files (%d bytes) to dataset %s (private=%s)",
            len(files),
            record["total_bytes"],
            settings.repo_id,
            settings.private,
        )
        for f in files:
            log.info("  would upload %s (%d bytes)", f["path"], f["size"])
        write_json_atomic(record_path, record)
        return record

    token = os.environ.get(settings.token_env)
    if not token:
        raise PublishError(
            f"environment variable {settings.token_env} (publish.run.token_env) holds no Hub token; "
            "export it, or set publish.settings.dry_run: true to only record what would be uploaded"
        )
    register_secret(token)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.endpoint, token=token)
    repo = api.create_repo(settings.repo_id, repo_type="dataset", private=settings.private, exist_ok=True)
    if settings.revision:
        api.create_branch(settings.repo_id, branch=settings.revision, repo_type="dataset", exist_ok=True)
    log.info("repository %s ready; uploading %d files (%d bytes)", repo, len(files), record["total_bytes"])
    commit = api.upload_folder(
        repo_id=settings.repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        revision=settings.revision,
        commit_message=settings.commit_message,
    )
    record.update(
        repo_url=str(repo), commit_url=getattr(commit, "commit_url", None), commit_oid=getattr(commit, "oid", None)
    )
    log.info("uploaded: %s", record["commit_url"])
    write_json_atomic(record_path, record)
    return record
