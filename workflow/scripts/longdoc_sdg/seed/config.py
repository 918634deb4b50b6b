"""Parameters of stage 01 (seed). The config splits them in two: `seed.settings` change what
the seed produces (rule params, a change reruns the seed and everything after it); `seed.run`
only steers a run (downloads, sandbox limits, safety caps, PNG compression; read at job time, never a rerun
trigger). A seed job works on both merged: `SeedParams`."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    # A misspelt key must fail loudly rather than silently keep a default.
    model_config = ConfigDict(extra="forbid")


class DownloadParams(_Strict):
    timeout_s: float = Field(
        20.0, gt=0, description="Connect/read timeout of one HTTP request, seconds (the reference uses 20)."
    )
    deadline_s: float = Field(
        300.0,
        gt=0,
        description="Wall-clock cap on one download attempt (connect, headers and body), enforced by a timer, so "
        "a server dripping bytes cannot hold a slot.",
    )
    url_deadline_s: float = Field(
        900.0,
        gt=0,
        description="Wall-clock cap on all attempts of one URL together, retry delays included.",
    )
    min_bytes_per_s: float = Field(
        1024.0,
        ge=0,
        description="Slowest accepted transfer: once a body has streamed for `timeout_s`, an average rate below "
        "this ends the attempt as a `timeout` (0 = no minimum).",
    )
    max_redirects: int = Field(5, ge=0, description="Most redirects followed for one request; more is an `http_error`.")
    allowed_networks: list[str] = Field(
        [],
        description="CIDRs (e.g. 10.1.2.0/24, 127.0.0.1/32) that may be fetched from although they are loopback, "
        "private, link-local or otherwise non-public; every other such address is refused as `blocked_address` "
        "(checked on the resolved address of every connection, redirects included). For tests and intranet mirrors.",
    )
    max_bytes: int = Field(
        200 * 1024 * 1024,
        gt=0,
        description="Largest PDF accepted from a URL or decoded from a WARC record; larger ones become `too_large` "
        "failures without being read (or inflated) to the end.",
    )
    retries: int = Field(
        3, ge=0, description="Extra attempts after a 5xx, 429, timeout or connection error (4xx fail at once)."
    )
    backoff_s: float = Field(
        1.0, ge=0, description="First retry delay, doubled on every further attempt (with jitter)."
    )
    backoff_max_s: float = Field(30.0, ge=0, description="Upper bound of one retry delay.")
    concurrency: int = Field(
        8, ge=1, description="Parallel downloads per seed job (threads; network-bound, independent of `threads`)."
    )
    user_agent: str = Field(
        "longdoc-sdg/0.1 (PDF seed fetcher)", description="User-Agent header sent with every request."
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network in CIDR notation (e.g. 127.0.0.1/32)") from None
        return networks


class WorkerParams(_Strict):
    cpu_seconds_base: float = Field(
        30.0,
        gt=0,
        description="CPU seconds a worker may spend on one task besides its pages (opening/parsing the PDF).",
    )
    cpu_seconds_per_page: float = Field(
        5.0,
        gt=0,
        description="CPU seconds allowed per page of a task. Over budget the worker is killed and the document "
        "becomes a `timeout` failure.",
    )
    memory_mb: int = Field(
        4096,
        ge=768,
        description="Address-space limit of a worker process (RLIMIT_AS), MB. Exceeding it makes the document a "
        "`too_large` (or `crashed`) failure. At least 768: measured, a worker's address space is 469 MB once "
        "started (it cannot start under 448 MB) and peaks at 843 MB rendering the sample PDFs at 144 DPI without "
        "a limit (RSS 160 MB); 768 leaves room for one page at the default pixel budget.",
    )
    chunk_pages: int = Field(
        32, ge=1, description="Pages rendered per worker task; long documents are split so all cores share them."
    )


class WarcParams(_Strict):
    enabled: bool = Field(
        False,
        description="When a FinePDFs row's URL fails, fetch its Common Crawl WARC record (`extra.file_path` + "
        "`extra.offset`) instead.",
    )
    base_url: str = Field(
        "https://data.commoncrawl.org/",
        description="Prefix joined with the row's `file_path`; tests point it at a local server.",
    )


class SeedSettings(_Strict):
    """What the seed makes: pages and documents (rule params)."""

    dpi: float = Field(144.0, gt=0, le=1200, description="Render resolution in dots per inch (the reference uses 144).")
    max_pixels_per_page: int = Field(
        40_000_000,
        ge=10_000,
        le=100_000_000,
        description="Pixel budget per page (width x height). Pages larger than that at `dpi` are rendered at the "
        "highest lower DPI (a multiple of 0.25) that fits; the effective DPI is stored.",
    )
    gray_detection: bool = Field(
        True,
        description="Store a page as 8-bit gray PNG when every rendered pixel has R == G == B (lossless; smaller "
        "and faster).",
    )
    warc: WarcParams = Field(default_factory=WarcParams, description="Common Crawl WARC fallback for FinePDFs rows.")


class SeedRun(_Strict):
    """How a seed job runs: downloads, sandbox limits, safety caps (read at job time)."""

    max_document_pages: int = Field(
        2000, ge=1, description="Documents with more pages are refused as `too_large` (page-count bombs)."
    )
    png_compression_level: int = Field(
        1,
        ge=0,
        le=9,
        description="Deflate level of the page PNGs (pixels are identical at any level; only size and speed "
        "change). With ISA-L installed levels above 3 act as 3.",
    )
    download: DownloadParams = Field(default_factory=DownloadParams, description="HTTP download settings.")
    worker: WorkerParams = Field(
        default_factory=WorkerParams, description="Sandbox limits of the rendering worker processes."
    )


class SeedParams(SeedSettings, SeedRun):
    """Both halves merged: what a seed job works with."""


def load_params(params: dict | SeedParams | None) -> SeedParams:
    if isinstance(params, SeedParams):
        return params
    return SeedParams.model_validate(params or {})


def seed_params(settings: dict, run: dict) -> SeedParams:
    """A seed job's parameters from the config's `seed.settings` and `seed.run`."""
    return SeedParams.model_validate({**settings, **run})
