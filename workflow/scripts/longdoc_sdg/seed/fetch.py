"""Get a manifest row's PDF: local path, http(s) URL, or its Common Crawl WARC record.

Downloads stream to disk with a byte cap, a per-request timeout, a per-attempt deadline and
retries with exponential backoff on transient errors; the first 1024 bytes must hold `%PDF`.
Only the standard library is used (urllib), so the fetcher has no extra dependency.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from ..io import get_logger
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


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would also follow redirects to ftp://; we fetch http(s) only.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _ALLOWED_SCHEMES:
            raise SeedFailure("bad_url", f"redirect to a non-http(s) URL {newurl[:200]!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_SafeRedirects())


class _Transient(Exception):
    """A failure worth retrying; carries the reason to report if retries run out."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _open(url: str, params: DownloadParams, headers: dict[str, str]):
    request = urllib.request.Request(
        url, headers={"User-Agent": params.user_agent, "Accept-Encoding": "identity", **headers}
    )
    try:
        return _opener.open(request, timeout=params.timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code >= 500 or error.code in _RETRY_STATUS:
            raise _Transient("http_error", f"HTTP {error.code} {error.reason}") from None
        raise SeedFailure("http_error", f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _classify_network_error(error.reason) from None
    except (OSError, http.client.HTTPException) as error:
        raise _classify_network_error(error) from None


def _classify_network_error(error) -> Exception:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return _Transient("timeout", f"no answer within the timeout ({error})")
    if isinstance(error, socket.gaierror):
        return SeedFailure("http_error", f"host name does not resolve ({error})")
    if isinstance(error, ssl.SSLCertVerificationError):
        return SeedFailure("http_error", f"TLS certificate rejected ({error})")
    return _Transient("http_error", f"connection failed ({type(error).__name__}: {error})")


def _with_retries(action, params: DownloadParams, what: str):
    attempts = params.retries + 1
    for attempt in range(attempts):
        try:
            return action()
        except _Transient as error:
            if attempt + 1 == attempts:
                suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
                raise SeedFailure(error.reason, f"{what}: {error.message}{suffix}") from None
            delay = min(params.backoff_max_s, params.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
            log.info("retrying %s in %.1fs after %s", what, delay, error.message)
            time.sleep(delay)


def _stream_body(response, params: DownloadParams, deadline: float):
    """Yield the body in chunks, enforcing the byte cap and the attempt deadline."""
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > params.max_bytes:
        raise SeedFailure("too_large", f"Content-Length {int(length)} exceeds the cap of {params.max_bytes} bytes")
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise _Transient("timeout", f"download exceeded its {params.deadline_s:.0f}s deadline")
        try:
            chunk = response.read(_CHUNK)
        except (socket.timeout, TimeoutError) as error:
            raise _Transient("timeout", f"read timed out ({error})") from None
        except (OSError, http.client.HTTPException) as error:
            raise _Transient("http_error", f"connection broke mid-body ({type(error).__name__}: {error})") from None
        if not chunk:
            return
        total += len(chunk)
        if total > params.max_bytes:
            raise SeedFailure("too_large", f"body exceeds the cap of {params.max_bytes} bytes")
        yield chunk


def download_to_file(url: str, dest: str | os.PathLike, params: DownloadParams) -> int:
    """Download a PDF to `dest`; returns its size. Raises SeedFailure."""
    url = check_url(url)

    def attempt() -> int:
        deadline = time.monotonic() + params.deadline_s
        with _open(url, params, {}) as response, open(dest, "wb") as out:
            head = b""
            size = 0
            for chunk in _stream_body(response, params, deadline):
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


def _split_headers(block: bytes, what: str) -> tuple[bytes, dict[str, str], bytes]:
    end = block.find(b"\r\n\r\n")
    if end < 0:
        raise SeedFailure("corrupt", f"{what}: no end of headers")
    lines = block[:end].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0].encode("latin-1"), headers, block[end + 4 :]


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    position = 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise SeedFailure("corrupt", "WARC payload: broken chunked encoding")
        size = int(body[position:line_end].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        start = line_end + 2
        out += body[start : start + size]
        position = start + size + 2


def parse_warc_response(record: bytes) -> bytes:
    """The HTTP response body stored in one (decompressed) WARC response record."""
    version, headers, rest = _split_headers(record, "WARC record")
    if not version.startswith(b"WARC/"):
        raise SeedFailure("corrupt", "not a WARC record")
    if headers.get("warc-type", "").lower() != "response":
        raise SeedFailure("corrupt", f"WARC record is of type {headers.get('warc-type')!r}, not 'response'")
    if "warc-truncated" in headers:
        # Common Crawl cuts large payloads; a cut PDF is a broken PDF.
        raise SeedFailure("corrupt", f"WARC record holds a truncated copy ({headers['warc-truncated']})")
    length = int(headers.get("content-length", "-1"))
    if length < 0 or len(rest) < length:
        raise SeedFailure("corrupt", "WARC record is shorter than its Content-Length")
    status_line, http_headers, body = _split_headers(rest[:length], "archived HTTP response")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise SeedFailure("corrupt", f"archived HTTP status line {status_line[:60]!r} is malformed")
    if not 200 <= int(parts[1]) < 300:
        raise SeedFailure("http_error", f"archived response was HTTP {int(parts[1])}")
    # Common Crawl stores decoded payloads and renames these headers (X-Crawler-...); older
    # or foreign WARCs may still carry the raw encodings.
    if "chunked" in http_headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    encoding = http_headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip"):
        body = zlib.decompress(body, 31)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    return body


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
    # Headers of a WARC record and its HTTP response stay far below 64 KiB.
    limit = download.max_bytes + 64 * 1024

    def attempt() -> int:
        deadline = time.monotonic() + download.deadline_s
        headers = {"Range": f"bytes={offset}-{offset + limit - 1}"}
        with _open(url, download, headers) as response:
            if response.status != 206 and offset != 0:
                raise SeedFailure("http_error", f"WARC server ignored the Range request (HTTP {response.status})")
            inflater = zlib.decompressobj(31)
            record = bytearray()
            for chunk in _stream_body(_CappedResponse(response, limit), download, deadline):
                try:
                    record += inflater.decompress(chunk, limit + 1 - len(record))
                except zlib.error as error:
                    raise SeedFailure("corrupt", f"WARC member at offset {offset} is not gzip: {error}") from None
                if len(record) > limit:
                    raise SeedFailure("too_large", f"WARC record exceeds {limit} bytes")
                if inflater.eof:
                    break
            if not inflater.eof:
                raise _Transient("http_error", "WARC gzip member ended early")
        body = parse_warc_response(bytes(record))
        check_pdf_head(body[:SNIFF_BYTES], "the WARC payload")
        Path(dest).write_bytes(body)
        return len(body)

    return _with_retries(attempt, download, f"WARC {file_path[:120]}@{offset}")


class _CappedResponse:
    """Lets `_stream_body` enforce the range length rather than the PDF cap."""

    def __init__(self, response, limit: int):
        self._response = response
        self.headers = {}
        self._left = limit

    def read(self, size: int) -> bytes:
        if self._left <= 0:
            return b""
        data = self._response.read(min(size, self._left))
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


def materialise(row: dict, params: SeedParams, workdir: str | os.PathLike) -> tuple[Path, bool]:
    """A local path holding the row's PDF, and whether it is a temporary copy (to delete)."""
    kind = row.get("source_kind")
    if kind == "local":
        path = Path(row["source"])
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
                # Keep the URL's reason (e.g. a dead link may come back); say what WARC gave.
                message = f"{first.message}; WARC fallback failed: {second.reason}: {second.message}"
                raise SeedFailure(first.reason, message) from None
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
