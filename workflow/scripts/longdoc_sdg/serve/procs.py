"""Small process, file and HTTP helpers shared by the wrapper, the launchers and the clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Never send our probes through a site proxy: the server is on the cluster network.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered (refused, reset, timed out)."""
    request = urllib.request.Request(url, method="GET")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() if exc.fp else b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, b""


def served_models(base: str, api_key: str | None, timeout: float = 5.0) -> tuple[int, list[str]]:
    """Status of GET {base}/v1/models and the model ids it lists."""
    status, body = http_get(f"{base}/v1/models", api_key, timeout)
    if status != 200:
        return status, []
    try:
        data = json.loads(body)
        return status, [str(item.get("id")) for item in data.get("data", []) if isinstance(item, dict)]
    except (ValueError, AttributeError):
        return status, []


def free_port(host: str) -> int:
    """A port the OS says is free right now on this node."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def advertised_host() -> str:
    """The name other nodes reach us by: LONGDOC_SERVE_HOST, else a resolvable host name,
    else the address of the default route's interface."""
    override = os.environ.get("LONGDOC_SERVE_HOST")
    if override:
        return override
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
        return name
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            # UDP connect sends nothing; it only picks the outgoing interface.
            sock.connect(("10.255.255.255", 1))
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; None otherwise.
    Together with the pid it tells our process apart from a later one reusing the pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_same_process(pid: int | None, start_time: int | None) -> bool:
    if not pid:
        return False
    current = proc_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process belongs to process group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pgid: int, grace_s: float, poll_s: float = 0.1) -> None:
    """SIGTERM a process group, SIGKILL whatever is left after `grace_s`."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(poll_s)
    signal_group(pgid, signal.SIGKILL)


def read_json(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tail(path: str | Path, lines: int = 40, max_bytes: int = 64_000, start: int = 0) -> str:
    """The last `lines` lines of a file, ignoring what lies before byte `start`."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(start, size - max_bytes))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(data.splitlines()[-lines:])


def unlink(path: str | Path | None) -> None:
    if path:
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
