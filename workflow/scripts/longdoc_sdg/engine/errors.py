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
    "context_too_long",  # prompt + images + max_tokens over max_model_len even at the floor resolution; not sent
    "too_many_images",  # more images than the deployment's --limit-mm-per-prompt allows; not sent
)
# When every row of a shard fails with one of these, the shard's job fails instead of writing a
# shard of failures: the cause is a setting, named here ({stage} filled in).
SETTING_REASONS = {
    "length": "raise stages.{stage}.settings.max_tokens (every reply was cut off)",
    "bad_request": "the endpoint refuses every request (HTTP 400/413/422, e.g. prompts over its context "
    "length): check the model of stages.{stage} (models.ALIAS.endpoint) and its context limit, or send fewer pages per request",
    "reasoning_only": "raise stages.{stage}.settings.max_tokens (thinking never ended within it)",
    "schema_invalid": "check the model of stages.{stage} (stages.{stage}.model): its replies never fit the schema",
    "invalid_json": "check the model of stages.{stage} (stages.{stage}.model): its replies are never JSON",
    "context_too_long": "no request fits the model's max_model_len even with its images at the floor "
    "resolution: lower stages.{stage}.settings.max_tokens or stages.{stage}.settings.min_image_pixels, send "
    "fewer pages per request, or serve the model with a longer max_model_len",
    "too_many_images": "every request has more images than the deployment's --limit-mm-per-prompt allows: "
    "send fewer pages per request from stages.{stage} or raise the limit in the deployment's extra_args",
}

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


class AllRowsFailed(Exception):
    """Every row of a shard failed for the same reason, which a setting causes: fail the job."""
