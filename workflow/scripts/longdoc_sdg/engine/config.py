"""Settings of the chat engine: where to send requests, how many at once, how to retry."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    model: str = Field(description="served model name, as listed by /v1/models")
    api_key: SecretStr | None = Field(default=None, description="bearer key; None sends no key")
    request_timeout_s: float = Field(default=600.0, gt=0, description="whole-request timeout")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP connect timeout")

    @field_validator("base_url")
    @classmethod
    def _normalise_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        # a bare host:port means vLLM's usual /v1 prefix
        return value + "/v1" if parts.path in ("", "/") else value

    def describe(self) -> str:
        """Endpoint and model for error messages (never the key)."""
        return f"endpoint {self.base_url} (model {self.model!r})"


class ConcurrencyConfig(BaseModel):
    """AIMD bounds. vLLM queues rather than answering 429, so `max` near --max-num-seqs."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=1, ge=1, description="the limit never shrinks below this")
    max: int = Field(
        default=256,
        ge=1,
        description="near the server's --max-num-seqs; per replica when a deployment runs several",
    )
    initial: int | None = Field(default=None, description="starting limit; None = max")
    increase_step: int = Field(default=1, ge=1, description="added after a window of successes")
    decrease_factor: float = Field(default=0.5, gt=0, lt=1, description="applied on overload")
    max_inflight_mb: float | None = Field(
        default=64,
        gt=0,
        description="MiB of request bodies (page images as base64) built and being sent at once: a "
        "request waits for room before its body is built and frees it once the body is sent (a retry "
        "builds it again); one larger than the budget goes alone. Bounds a job's memory when "
        "requests are large (a 50-page document is about 14 MiB); null = no limit",
    )

    replica_max_waiting: int = Field(
        default=2,
        ge=0,
        description="a replica whose /metrics shows more requests waiting than this gets no new "
        "request until its queue drains (requests go to the others)",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> "ConcurrencyConfig":
        if self.min > self.max:
            raise ValueError("concurrency min must not exceed max")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError("concurrency initial must lie within [min, max]")
        return self

    @property
    def start(self) -> int:
        return self.max if self.initial is None else self.initial

    @property
    def max_inflight_bytes(self) -> int | None:
        return None if self.max_inflight_mb is None else int(self.max_inflight_mb * 2**20)


class RetryConfig(BaseModel):
    """Retries for 5xx, 408/429, timeouts, connection errors and malformed bodies (never 400)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=5, ge=1, description="attempts per request, the first included")
    backoff_initial_s: float = Field(default=0.5, ge=0, description="delay before the first retry")
    backoff_max_s: float = Field(default=20.0, ge=0, description="cap on any one delay")
    backoff_multiplier: float = Field(default=2.0, ge=1, description="growth of the delay per retry")
    jitter: float = Field(default=0.5, ge=0, le=1, description="share of each delay drawn at random")

    def delay(self, attempt: int, draw: float) -> float:
        """Delay before attempt `attempt + 1`; `draw` uniform in [0, 1)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** (attempt - 1))
        # jitter spreads retries of requests that failed together
        return base * (1 - self.jitter) + base * self.jitter * draw


class BreakerConfig(BaseModel):
    """Fail the job when infrastructure errors (after retries) dominate recent requests."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(default=50, ge=1, description="most recent finished requests considered")
    min_requests: int = Field(default=10, ge=1, description="no verdict on fewer requests")
    max_error_rate: float = Field(
        default=0.5, ge=0, le=1, description="share of failed requests in the window that fails the job"
    )
