"""The chat client engine every model stage uses (see docs/contracts.md, "Engine API")."""

from ..rowstore import AccountingError, ShardWriter
from .client import ChatEngine, ChatResult, EngineUsage, Usage, row_usage
from .config import BreakerConfig, ConcurrencyConfig, EndpointConfig, RetryConfig
from .errors import CONTENT_REASONS, INFRA_REASONS, EndpointError, RecordError
from .images import image_part
from .runner import DEFAULT_KEY_COLUMNS, RunSummary, run_rows
from .schema import closed_schema, parse_reply, response_format

__all__ = [
    "AccountingError",
    "BreakerConfig",
    "CONTENT_REASONS",
    "ChatEngine",
    "ChatResult",
    "ConcurrencyConfig",
    "DEFAULT_KEY_COLUMNS",
    "EndpointConfig",
    "EndpointError",
    "EngineUsage",
    "INFRA_REASONS",
    "RecordError",
    "RetryConfig",
    "RunSummary",
    "ShardWriter",
    "Usage",
    "closed_schema",
    "image_part",
    "parse_reply",
    "response_format",
    "row_usage",
    "run_rows",
]
