"""A local HTTP server for the download tests and WARC records to serve (no tests here)."""

from __future__ import annotations

import io
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The first shipped sample PDF: what the server hands out as a good document.
SAMPLE = sorted((Path(__file__).resolve().parents[2] / "resources" / "sample_pdfs").glob("*.pdf"))[0]
PDF = SAMPLE.read_bytes()


def warc_record(payload: bytes, extra_warc_headers: bytes = b"", http_headers: bytes = b"") -> bytes:
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n"
        + http_headers
        + b"Content-Length: %d\r\n\r\n" % len(payload)
        + payload
    )
    return (
        b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://dead.invalid/doc.pdf\r\n"
        + extra_warc_headers
        + b"Content-Type: application/http; msgtype=response\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(response)
        + response
        + b"\r\n\r\n"
    )


class Server:
    """A tiny HTTP server on 127.0.0.1 with scripted routes and request accounting."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.ranges: list[str] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    server.route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    @staticmethod
    def send(handler, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True):
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def route(self, h):
        path = h.path
        if path in ("/ok.pdf", "/second.pdf"):
            self.send(h, 200, PDF, {"Content-Type": "application/pdf"})
        elif path == "/gone.pdf":
            self.send(h, 404, b"not here")
        elif path == "/flaky.pdf":
            self.send(h, 500, b"oops") if self.hits[path] <= 2 else self.send(h, 200, PDF)
        elif path == "/down.pdf":
            self.send(h, 503, b"unavailable")
        elif path == "/huge-declared.pdf":
            h.send_response(200)
            h.send_header("Content-Length", str(10**9))
            h.end_headers()
            h.wfile.write(b"%PDF-1.7\n")
        elif path == "/huge-streamed.pdf":
            # No Content-Length: the client must count while reading.
            self.send(h, 200, b"%PDF-1.7\n" + b"0" * 300_000, length=False)
        elif path == "/page.pdf":
            self.send(
                h, 200, b"<!DOCTYPE html><html><body>Sign in to download</body></html>", {"Content-Type": "text/html"}
            )
        elif path == "/slow.pdf":
            time.sleep(2.0)
            self.send(h, 200, PDF)
        elif path == "/to-ftp.pdf":
            self.send(h, 302, b"", {"Location": "ftp://127.0.0.1/x.pdf"})
        elif path == "/moved.pdf":
            self.send(h, 301, b"", {"Location": "/ok.pdf"})
        elif path.startswith("/delay/"):
            time.sleep(0.4)
            # A distinct trailing comment per path: distinct documents, not exact duplicates.
            self.send(h, 200, PDF + f"\n% copy {path}\n".encode())
        elif path in self.files:
            data = self.files[path]
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
            if not match:
                self.send(h, 200, data)
                return
            self.ranges.append(h.headers["Range"])
            start = int(match.group(1))
            end = min(len(data) - 1, int(match.group(2)) if match.group(2) else len(data) - 1)
            self.send(h, 206, data[start : end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
        else:
            self.send(h, 404, b"no route")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def parse_warc_response(record: bytes, max_bytes: int = 200 * 1024 * 1024) -> bytes:
    """The HTTP body stored in one whole (decompressed) WARC response record, fed to the
    fetcher's streaming decoder in the fetcher's chunk size."""
    from longdoc_sdg.seed.fetch import _CHUNK, WarcResponseDecoder

    out = io.BytesIO()
    decoder = WarcResponseDecoder(out, max_bytes)
    for start in range(0, len(record), _CHUNK):
        decoder.feed(record[start : start + _CHUNK])
    decoder.finish()
    return out.getvalue()
