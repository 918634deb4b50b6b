"""The one exception of stage 01: a document that cannot be fetched or rendered."""

from __future__ import annotations

# Reason classes written to failures.parquet.
REASONS = (
    "missing",  # local file gone
    "refused_entry",  # a local entry not read: symlink loop, broken link, link leaving the folder, FIFO
    "bad_url",  # not an http(s) URL, or no URL at all
    "blocked_address",  # the URL or a redirect leads to a loopback/private/... address not allowed
    "http_error",  # 4xx, or 5xx / connection errors after all retries
    "timeout",  # download timed out, or the worker ran out of CPU / wall time
    "too_large",  # download over the byte cap, page-count cap, pixel floor, worker memory
    "not_pdf",  # no %PDF marker in the first 1024 bytes
    "empty",  # zero-byte file, or a PDF without pages
    "encrypted",  # needs a password
    "corrupt",  # unparsable, truncated, or a page that cannot be loaded/rendered
    "crashed",  # the worker process died (signal, abnormal exit)
    "warc_truncated",  # the Common Crawl record holds only a truncated copy of the PDF
    "contaminated",  # a copy of a benchmark document (decontamination)
    "duplicate",  # the same bytes as another document of the shard, which is seeded
)


class SeedFailure(Exception):
    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown seed failure reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
