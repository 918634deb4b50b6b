"""The two failure classes of a model call: one record's problem, or the endpoint's."""

from __future__ import annotations

from typing import Any

# Reasons a record can fail with (the `failure_reason` column of stage outputs).
CONTENT_REASONS = (
    "length",  # finish_reason == "length": the answer was cut off
    "reasoning_only",  # reasoning text but no content (thinking never ended)
    "empty",  # neither content nor reasoning
    "invalid_json",  # structured output requested, content is not strict JSON
    "schema_invalid",  # JSON that does not validate against the closed schema
    "bad_request",  # HTTP 400/413/422: this request can never succeed unchanged
)
# Infrastructure trouble that outlived the retries but stayed under the circuit breaker.
INFRA_REASONS = ("server_error", "timeout", "connection_error", "malformed_response")


class RecordError(Exception):
    """This record failed; the job goes on and writes a failure row with `reason`."""

    def __init__(self, reason: str, message: str = "", usage: Any = None, infrastructure: bool = False):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message
        # tokens the failed reply still cost (e.g. a truncated answer)
        self.usage = usage
        self.infrastructure = infrastructure


class EndpointError(Exception):
    """The endpoint cannot serve this job (down, unknown model, rejected key, error storm).

    The job must fail (so the scheduler can retry it later) instead of writing failure rows.
    """

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}
