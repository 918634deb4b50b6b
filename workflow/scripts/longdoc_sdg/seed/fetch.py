"""Get a manifest row's PDF: local path, http(s) URL, or its Common Crawl WARC record.

Downloads stream to disk with a byte cap, a per-request timeout, a per-attempt deadline and
retries with exponential backoff on transient errors; the first 1024 bytes must hold `%PDF`.
Only the standard library is used (urllib), so the fetcher has no extra dependency.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import random
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from ..io import get_logger
from ..manifest import local_entry_problem
from .config import DownloadParams, SeedParams, load_params
from .errors import SeedFailure

SNIFF_BYTES = 1024
_CHUNK = 256 * 1024
_RETRY_STATUS = {408, 425, 429}
_ALLOWED_SCHEMES = ("http", "https")

log = get_logger("seed.fetch")


def check_pdf_head(head: bytes, what: str) -> None:
    if not head:
        raise SeedFailure("empty", f"{what} is empty (0 bytes)")
    if b"%PDF" not in head[:SNIFF_BYTES]:
        preview = head[:40].decode("latin-1").replace("\n", " ").strip()
        raise SeedFailure("not_pdf", f"{what} has no %PDF marker in its first {SNIFF_BYTES} bytes (starts {preview!r})")


def check_url(url: str | None) -> str:
    if not url or not isinstance(url, str):
        raise SeedFailure("bad_url", "the row has no URL")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme.lower() not in _ALLOWED_SCHEMES or not parsed.netloc:
        raise SeedFailure("bad_url", f"only http(s) URLs are fetched, not {url[:200]!r}")
    return url.strip()


# --- Address policy -------------------------------------------------------------------
# URLs come from the open web and the fetcher runs inside a private network: every connection
# (first request and every redirect hop) goes only to addresses that pass this check. The check
# runs on the addresses the connection is actually made to, after resolution, so a host name
# that resolves differently the second time (DNS rebinding) gains nothing.


class _BlockedAddress(OSError):
    """Raised from inside a connection attempt; urllib hands it back wrapped in a URLError."""


class AddressPolicy:
    def __init__(self, allowed_networks: list[str]):
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]

    def refusal(self, address: str) -> str | None:
        """Why `address` (a resolved IP) must not be connected to, or None when it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour or ip.teredo):
            return "an IPv6 address embedding an IPv4 address"
        for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
            if getattr(ip, f"is_{kind}"):
                return f"a {kind.replace('_', '-')} address"
        if not ip.is_global:
            return "not a public address"
        return None


def _odd_numeric_host(host: str) -> bool:
    """Hosts like 2130706433, 0177.0.0.1 or 127.1: IPv4 in a spelling only the C resolver
    accepts. No real site is named so; refuse them whatever the allow-list says."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


def _guarded_connect(policy: AddressPolicy, register, address, timeout, source_address=None) -> socket.socket:
    host, port = address
    if _odd_numeric_host(host):
        raise _BlockedAddress(f"host {host!r} is an IPv4 address in a non-standard spelling")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if isinstance(literal, ipaddress.IPv6Address) and literal.ipv4_mapped:
        raise _BlockedAddress(f"host {host!r} is an IPv4-mapped IPv6 address")
    candidates, refused = [], []
    for family, kind, proto, _name, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        reason = policy.refusal(sockaddr[0])
        if reason is None:
            candidates.append((family, kind, proto, sockaddr))
        else:
            refused.append(f"{sockaddr[0]} is {reason}")
    if not candidates:
        detail = "; ".join(dict.fromkeys(refused)) or "no address"
        raise _BlockedAddress(
            f"host {host!r} resolves only to blocked addresses ({detail}); add the network to "
            "seed.run.download.allowed_networks to fetch from it"
        )
    error: OSError | None = None
    for family, kind, proto, sockaddr in candidates:
        sock = socket.socket(family, kind, proto)
        try:
            register(sock)
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)  # the very address that was checked
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error


class _Attempt:
    """One download attempt: its connections pass the address policy, and a timer shuts them
    down at the deadline, so a server dripping bytes (into headers or body) cannot hold it."""

    def __init__(self, policy: AddressPolicy, seconds: float, setting: str):
        self.policy = policy
        self.seconds = seconds
        self.setting = setting
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Attempt":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                raise self.timeout()
            self._sockets.append(sock)

    def connect(self, address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        return _guarded_connect(self.policy, self.register, address, timeout, source_address)

    def timeout(self) -> "_Transient":
        return _Transient("timeout", f"the download did not finish within {self.seconds:.0f}s: raise {self.setting}")

    def check(self) -> None:
        if self.expired:
            raise self.timeout()


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, attempt: _Attempt, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = attempt.connect


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, attempt: _Attempt, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = attempt.connect


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, attempt: _Attempt):
        super().__init__()
        self.attempt = attempt

    def http_open(self, req):
        return self.do_open(_GuardedHTTPConnection, req, attempt=self.attempt)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, attempt: _Attempt):
        super().__init__()
        self.attempt = attempt

    def https_open(self, req):
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context, attempt=self.attempt)


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """http(s) targets only (urllib would follow ftp://), at most `limit` hops, and a redirect
    body is never read (it could be endless)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.max_redirections = limit + 1  # ours fires first, with a message naming the setting

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _ALLOWED_SCHEMES:
            raise SeedFailure("bad_url", f"redirect to a non-http(s) URL {newurl[:200]!r}")
        if len(getattr(req, "redirect_dict", {})) >= self.limit:
            raise SeedFailure("http_error", f"more than {self.limit} redirects: raise seed.run.download.max_redirects")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(params: DownloadParams, attempt: _Attempt) -> urllib.request.OpenerDirector:
    # No proxy from the environment: a proxy would make the connection, unchecked.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _GuardedHTTPHandler(attempt),
        _GuardedHTTPSHandler(attempt),
        _SafeRedirects(params.max_redirects),
    )


class _Transient(Exception):
    """A failure worth retrying; carries the reason to report if retries run out."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _open(url: str, params: DownloadParams, headers: dict[str, str], attempt: _Attempt):
    request = urllib.request.Request(
        url, headers={"User-Agent": params.user_agent, "Accept-Encoding": "identity", **headers}
    )
    try:
        return _opener(params, attempt).open(request, timeout=params.timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        attempt.check()
        if error.code >= 500 or error.code in _RETRY_STATUS:
            raise _Transient("http_error", f"HTTP {error.code} {error.reason}") from None
        raise SeedFailure("http_error", f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        attempt.check()
        raise _classify_network_error(error.reason) from None
    except (OSError, http.client.HTTPException) as error:
        attempt.check()
        raise _classify_network_error(error) from None


def _classify_network_error(error) -> Exception:
    if isinstance(error, _BlockedAddress):
        return SeedFailure("blocked_address", str(error))
    if isinstance(error, (socket.timeout, TimeoutError)):
        return _Transient("timeout", f"no answer within seed.run.download.timeout_s ({error})")
    if isinstance(error, socket.gaierror):
        return SeedFailure("http_error", f"host name does not resolve ({error})")
    if isinstance(error, ssl.SSLCertVerificationError):
        return SeedFailure("http_error", f"TLS certificate rejected ({error})")
    return _Transient("http_error", f"connection failed ({type(error).__name__}: {error})")


def _with_retries(action, params: DownloadParams, what: str):
    """Run `action(attempt)` until it succeeds, fails for good, or the URL's deadline passes.
    Each attempt has its own deadline (never past the URL's) enforced by its timer."""
    policy = AddressPolicy(params.allowed_networks)
    url_deadline = time.monotonic() + params.url_deadline_s
    attempts = params.retries + 1
    for number in range(attempts):
        left = url_deadline - time.monotonic()
        if left <= params.deadline_s:
            seconds, setting = max(0.001, left), "seed.run.download.url_deadline_s"
        else:
            seconds, setting = params.deadline_s, "seed.run.download.deadline_s"
        try:
            with _Attempt(policy, seconds, setting) as attempt:
                try:
                    return action(attempt)
                except (_Transient, SeedFailure, OSError, http.client.HTTPException):
                    attempt.check()  # whatever broke after the deadline broke because of it
                    raise
        except _Transient as error:
            delay = min(params.backoff_max_s, params.backoff_s * 2**number) * (0.5 + random.random() / 2)
            out_of_time = time.monotonic() + delay >= url_deadline
            if number + 1 == attempts or out_of_time:
                suffix = f" (after {number + 1} attempts)" if number else ""
                raise SeedFailure(error.reason, f"{what}: {error.message}{suffix}") from None
            log.info("retrying %s in %.1fs after %s", what, delay, error.message)
            time.sleep(delay)


def _stream_body(
    response,
    params: DownloadParams,
    attempt: _Attempt,
    limit: int | None = None,
    setting: str = "seed.run.download.max_bytes",
):
    """Yield the body in chunks as they arrive, enforcing the byte cap, the minimum transfer
    rate and the declared length (a body cut short is worth another try)."""
    limit = params.max_bytes if limit is None else limit
    declared = response.headers.get("Content-Length")
    declared = int(declared) if declared and declared.isdigit() else None
    if declared is not None and declared > limit:
        raise SeedFailure("too_large", f"Content-Length {declared} exceeds the cap of {limit} bytes: raise {setting}")
    started = time.monotonic()
    total = 0
    while True:
        try:
            chunk = response.read1(_CHUNK)
        except (socket.timeout, TimeoutError) as error:
            raise _Transient("timeout", f"read timed out after seed.run.download.timeout_s ({error})") from None
        except (OSError, http.client.HTTPException) as error:
            raise _Transient("http_error", f"connection broke mid-body ({type(error).__name__}: {error})") from None
        attempt.check()
        if not chunk:
            if declared is not None and total != declared:
                raise _Transient("http_error", f"body ended after {total} of its {declared} bytes (Content-Length)")
            return
        total += len(chunk)
        if total > limit:
            raise SeedFailure("too_large", f"body exceeds the cap of {limit} bytes: raise {setting}")
        elapsed = time.monotonic() - started
        if params.min_bytes_per_s and elapsed > params.timeout_s and total / elapsed < params.min_bytes_per_s:
            raise _Transient(
                "timeout",
                f"transfer too slow ({total / elapsed:.0f} B/s over {elapsed:.0f}s, below "
                f"seed.run.download.min_bytes_per_s={params.min_bytes_per_s:g})",
            )
        yield chunk


def download_to_file(url: str, dest: str | os.PathLike, params: DownloadParams) -> int:
    """Download a PDF to `dest`; returns its size. Raises SeedFailure."""
    url = check_url(url)

    def attempt(guard: _Attempt) -> int:
        with _open(url, params, {}, guard) as response, open(dest, "wb") as out:
            head = b""
            size = 0
            for chunk in _stream_body(response, params, guard):
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES:
                        check_pdf_head(head, "the download")
                out.write(chunk)
                size += len(chunk)
            if len(head) < SNIFF_BYTES:
                check_pdf_head(head, "the download")
            return size

    return _with_retries(attempt, params, f"GET {url[:200]}")


# --- Common Crawl WARC fallback -------------------------------------------------------
# A record is decoded as it streams in and its payload goes straight to disk: whatever a few
# KB of gzip inflate to, the fetcher holds one chunk of it in memory, never the record.

_HEADER_CAP = 64 * 1024  # a WARC or HTTP header block; real ones are a few hundred bytes


class _Inflater:
    """A zlib stream decoded piece by piece (no call returns more than one chunk)."""

    def __init__(self, wbits: int, what: str):
        self._zlib = zlib.decompressobj(wbits)
        self.what = what

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    def feed(self, data: bytes):
        while data and not self._zlib.eof:
            try:
                out = self._zlib.decompress(data, _CHUNK)
            except zlib.error as error:
                raise SeedFailure("corrupt", f"{self.what} does not decompress: {error}") from None
            data = self._zlib.unconsumed_tail
            if out:
                yield out

    def finish(self) -> None:
        if not self._zlib.eof:
            raise SeedFailure("corrupt", f"{self.what} ends before its compressed stream does")


class _Dechunker:
    """HTTP chunked transfer coding, undone as it streams."""

    def __init__(self):
        self._buffer = b""
        self._left = 0  # data bytes of the current chunk still to come
        self._crlf = 0  # bytes of the CRLF after a chunk still to skip
        self.done = False

    def feed(self, data: bytes):
        data = self._buffer + data
        self._buffer = b""
        while data and not self.done:
            if self._left:
                piece, data = data[: self._left], data[self._left :]
                self._left -= len(piece)
                if not self._left:
                    self._crlf = 2
                yield piece
            elif self._crlf:
                skip = min(self._crlf, len(data))
                data, self._crlf = data[skip:], self._crlf - skip
            else:
                line_end = data.find(b"\r\n")
                if line_end < 0:
                    if len(data) > 1024:
                        raise SeedFailure("corrupt", "WARC payload: broken chunked encoding")
                    self._buffer = data
                    return
                try:
                    size = int(data[:line_end].split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise SeedFailure("corrupt", "WARC payload: broken chunked encoding") from None
                data = data[line_end + 2 :]
                self._left = size
                self.done = size == 0

    def finish(self) -> None:
        if not self.done:
            raise SeedFailure("corrupt", "WARC payload: chunked encoding ends without its last chunk")


def _parse_headers(block: bytes) -> tuple[bytes, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0].encode("latin-1"), headers


class WarcResponseDecoder:
    """Decodes one decompressed WARC response record fed in pieces, writing the archived HTTP
    body (de-chunked, content-decoded) to `out`; a body decoding to more than `max_bytes` is
    `too_large`. `finish()` checks the record was complete."""

    def __init__(self, out, max_bytes: int):
        self.out = out
        self.max_bytes = max_bytes
        self.size = 0
        self.head = b""  # the body's first SNIFF_BYTES, for the %PDF check
        self._buffer = b""
        self._state = "warc"  # -> "http" -> "body"
        self._block_left = 0  # bytes of the archived HTTP response (WARC Content-Length) to come
        self._decoders: list = []

    def feed(self, data: bytes) -> None:
        if self._state != "body":
            data = self._read_headers(data)
        if self._state == "body" and data:
            piece = data[: self._block_left]
            self._block_left -= len(piece)
            self._decode(piece, 0)

    def _read_headers(self, data: bytes) -> bytes:
        data = self._buffer + data
        while self._state != "body":
            what = "WARC record" if self._state == "warc" else "archived HTTP response"
            end = data.find(b"\r\n\r\n", 0, _HEADER_CAP + 4)
            if end < 0:
                if len(data) > _HEADER_CAP:
                    raise SeedFailure("corrupt", f"{what}: no end of headers within {_HEADER_CAP} bytes")
                self._buffer = data
                return b""
            first, headers = _parse_headers(data[:end])
            data = data[end + 4 :]
            if self._state == "warc":
                self._start_record(first, headers)
                self._state = "http"
            else:
                self._block_left -= end + 4
                if self._block_left < 0:
                    raise SeedFailure("corrupt", "WARC record is shorter than its Content-Length")
                self._start_body(first, headers)
                self._state = "body"
        self._buffer = b""
        return data

    def _start_record(self, version: bytes, headers: dict[str, str]) -> None:
        if not version.startswith(b"WARC/"):
            raise SeedFailure("corrupt", "not a WARC record")
        if headers.get("warc-type", "").lower() != "response":
            raise SeedFailure("corrupt", f"WARC record is of type {headers.get('warc-type')!r}, not 'response'")
        if "warc-truncated" in headers:
            # Common Crawl cuts large payloads; a cut PDF is a broken PDF.
            raise SeedFailure("corrupt", f"WARC record holds a truncated copy ({headers['warc-truncated']})")
        length = headers.get("content-length", "")
        if not length.isdigit():
            raise SeedFailure("corrupt", f"WARC record has no valid Content-Length ({length[:40]!r})")
        self._block_left = int(length)

    def _start_body(self, status_line: bytes, headers: dict[str, str]) -> None:
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise SeedFailure("corrupt", f"archived HTTP status line {status_line[:60]!r} is malformed")
        if not 200 <= int(parts[1]) < 300:
            raise SeedFailure("http_error", f"archived response was HTTP {int(parts[1])}")
        # Common Crawl stores decoded payloads and renames these headers (X-Crawler-...); older
        # or foreign WARCs may still carry the raw encodings.
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._decoders.append(_Dechunker())
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoders.append(_Inflater(31, "the archived gzip payload"))
        elif encoding == "deflate":
            self._decoders.append(_Inflater(15, "the archived deflate payload"))

    def _decode(self, data: bytes, level: int) -> None:
        if level == len(self._decoders):
            self._write(data)
            return
        for piece in self._decoders[level].feed(data):
            self._decode(piece, level + 1)

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise SeedFailure(
                "too_large",
                f"the archived payload exceeds the cap of {self.max_bytes} bytes: raise seed.run.download.max_bytes",
            )
        if len(self.head) < SNIFF_BYTES:
            self.head += data[: SNIFF_BYTES - len(self.head)]
        self.out.write(data)

    def finish(self) -> None:
        if self._state != "body":
            what = "WARC record" if self._state == "warc" else "archived HTTP response"
            raise SeedFailure("corrupt", f"{what}: no end of headers")
        if self._block_left:
            raise SeedFailure("corrupt", "WARC record is shorter than its Content-Length")
        for decoder in self._decoders:
            decoder.finish()


def _warc_location(extra: dict) -> tuple[str, int]:
    file_path, offset = extra.get("file_path"), extra.get("offset")
    if not isinstance(file_path, str) or not file_path or offset is None:
        raise SeedFailure("bad_url", "the row has no WARC file_path/offset")
    # A relative path on the configured host only: no scheme, no host switch, no traversal.
    if "://" in file_path or file_path.startswith("//") or ".." in file_path.split("/"):
        raise SeedFailure("bad_url", f"suspicious WARC file_path {file_path[:200]!r}")
    try:
        offset = int(offset)
    except (TypeError, ValueError):
        raise SeedFailure("bad_url", f"WARC offset {offset!r} is not an integer") from None
    if offset < 0:
        raise SeedFailure("bad_url", f"negative WARC offset {offset}")
    return file_path.lstrip("/"), offset


def fetch_warc_record(extra: dict, dest: str | os.PathLike, params: SeedParams) -> int:
    """Range-read one gzip member at `offset` of `<base_url>/<file_path>`, write its PDF."""
    file_path, offset = _warc_location(extra)
    url = check_url(params.warc.base_url.rstrip("/") + "/" + urllib.parse.quote(file_path))
    download = params.download
    # The compressed member is at most the payload cap plus its header blocks.
    limit = download.max_bytes + 2 * _HEADER_CAP

    def attempt(guard: _Attempt) -> int:
        headers = {"Range": f"bytes={offset}-{offset + limit - 1}"}
        with _open(url, download, headers, guard) as response, open(dest, "wb") as out:
            if response.status != 206 and offset != 0:
                raise SeedFailure("http_error", f"WARC server ignored the Range request (HTTP {response.status})")
            member = _Inflater(31, f"WARC member at offset {offset}")
            decoder = WarcResponseDecoder(out, download.max_bytes)
            for chunk in _stream_body(_RangeResponse(response, limit), download, guard, limit):
                for piece in member.feed(chunk):
                    decoder.feed(piece)
                if member.eof:
                    break
            if not member.eof:
                raise _Transient("http_error", "WARC gzip member ended early")
            decoder.finish()
        check_pdf_head(decoder.head, "the WARC payload")
        return decoder.size

    return _with_retries(attempt, download, f"WARC {file_path[:120]}@{offset}")


class _RangeResponse:
    """Reads at most `limit` bytes; a server that ignored the Range header (HTTP 200 at offset
    0) sends the whole file, whose length says nothing about the record."""

    def __init__(self, response, limit: int):
        self._response = response
        self.headers = response.headers if response.status == 206 else {}
        self._left = limit

    def read1(self, size: int) -> bytes:
        if self._left <= 0:
            return b""
        data = self._response.read1(min(size, self._left))
        self._left -= len(data)
        return data


# --- Entry points ---------------------------------------------------------------------


def _extra(row: dict) -> dict:
    value = row.get("extra")
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def check_local_row(row: dict) -> Path:
    """The path of a local row that may be read; SeedFailure("refused_entry") for what the
    listing refused, checked again now (the folder may have changed since)."""
    path = Path(row["source"])
    extra = _extra(row)
    if extra.get("refused"):
        raise SeedFailure("refused_entry", str(extra["refused"]))
    relative = extra.get("relative_path")
    if isinstance(relative, str) and 1 <= len(PurePosixPath(relative).parts) <= len(path.parents):
        root = path.parents[len(PurePosixPath(relative).parts) - 1]
        problem = local_entry_problem(path, root, extra.get("symlinks", "inside"))
        if problem:
            raise SeedFailure("refused_entry", f"{relative} in source.settings.local.path: {problem}")
    return path


def materialise(row: dict, params: SeedParams, workdir: str | os.PathLike) -> tuple[Path, bool]:
    """A local path holding the row's PDF, and whether it is a temporary copy (to delete)."""
    kind = row.get("source_kind")
    if kind == "local":
        path = check_local_row(row)
        if not path.is_file():
            raise SeedFailure("missing", f"{path} does not exist or is not a regular file")
        with open(path, "rb") as handle:
            check_pdf_head(handle.read(SNIFF_BYTES), str(path))
        return path, False

    fd, tmp = tempfile.mkstemp(prefix="dl-", suffix=".pdf", dir=workdir)
    os.close(fd)
    dest = Path(tmp)
    try:
        try:
            download_to_file(row.get("url") or row.get("source"), dest, params.download)
        except SeedFailure as first:
            if not (params.warc.enabled and first.reason != "bad_url" and _extra(row).get("file_path")):
                raise
            try:
                fetch_warc_record(_extra(row), dest, params)
            except SeedFailure as second:
                # Keep the URL's reason (a dead link may come back) unless the record was found
                # and is over the size cap: then the setting to raise is the cause.
                message = f"{first.message}; WARC fallback failed: {second.reason}: {second.message}"
                raise SeedFailure("too_large" if second.reason == "too_large" else first.reason, message) from None
            log.info("fetched %s from its WARC record after: %s", row.get("doc_id"), first.message)
        return dest, True
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def fetch_document(manifest_row: dict, params: dict | SeedParams | None = None) -> bytes:
    """The PDF bytes of one manifest row, or SeedFailure(reason, message)."""
    params = load_params(params)
    workdir = tempfile.mkdtemp(prefix="longdoc-fetch-")
    try:
        path, _temporary = materialise(manifest_row, params, workdir)
        return path.read_bytes()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
