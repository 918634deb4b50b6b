"""HTTP transports of the engine: both return (status, body bytes, Retry-After) or raise
TransportError; the engine gives the answers OpenAI semantics.

"aiohttp" (default): measured at about 0.2 ms of client CPU per request against about 1.6 ms for
the openai client on httpx (benchmarks/bench_client.py); at C=64 and 0.2 s latency on 2 cores
that difference decides whether the server is kept saturated.
"openai": the AsyncOpenAI client (httpx), kept for parity and as a fallback.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from .config import EndpointConfig

try:  # orjson encodes a 270 KB base64 image about 10x faster than json
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    loads = json.loads


class TransportError(Exception):
    """kind: "unreachable" (cannot connect), "timeout", "connection_error" (reset mid-request)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


Response = tuple[int, bytes, str | None]


def _env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY pick for `url`, as httpx would, or None."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


class AiohttpTransport:
    def __init__(self, endpoint: EndpointConfig, max_connections: int):
        self.endpoint = endpoint
        self._max_connections = max_connections
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if endpoint.api_key is not None:
            self._headers["Authorization"] = f"Bearer {endpoint.api_key.get_secret_value()}"
        # sock_connect, not connect: waiting for a pooled connection is not a connect failure
        self._timeout = aiohttp.ClientTimeout(
            total=endpoint.request_timeout_s, sock_connect=endpoint.connect_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # created lazily: a session belongs to the event loop that is running when it is made
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300
            )
            # trust_env would look up proxies and netrc in a thread for every request (measured:
            # two thread hops per request); look the proxy up once instead
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers, trust_env=False
            )
            self._proxy = _env_proxy(self.endpoint.base_url)
        return self._session

    async def request(self, method: str, path: str, body: dict | None = None) -> Response:
        session = self._get_session()
        url = self.endpoint.base_url + path
        data = dumps(body) if body is not None else None
        try:
            async with session.request(method, url, data=data, proxy=self._proxy) as resp:
                return resp.status, await resp.read(), resp.headers.get("Retry-After")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError("unreachable", f"cannot connect: {exc}") from None
        except asyncio.TimeoutError:
            raise TransportError("timeout", f"no answer within {self.endpoint.request_timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError("connection_error", f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAITransport:
    def __init__(self, endpoint: EndpointConfig, max_connections: int):
        self.endpoint = endpoint
        self._max_connections = max_connections
        self._client = None

    def _get_client(self):
        if self._client is None:
            import httpx2
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient

            key = self.endpoint.api_key.get_secret_value() if self.endpoint.api_key else "EMPTY"
            limits = httpx2.Limits(
                max_connections=self._max_connections, max_keepalive_connections=self._max_connections
            )
            timeout = httpx2.Timeout(self.endpoint.request_timeout_s, connect=self.endpoint.connect_timeout_s)
            self._client = AsyncOpenAI(
                base_url=self.endpoint.base_url,
                api_key=key,
                max_retries=0,  # the engine retries, with its own accounting
                timeout=timeout,
                http_client=DefaultAsyncHttpxClient(limits=limits, timeout=timeout),
            )
        return self._client

    async def request(self, method: str, path: str, body: dict | None = None) -> Response:
        import httpx2
        import openai

        client = self._get_client()
        try:
            if method == "GET":
                resp = await client.get(path, cast_to=httpx2.Response)
            else:
                resp = await client.post(path, cast_to=httpx2.Response, body=body)
            return resp.status_code, resp.content, resp.headers.get("Retry-After")
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.content, exc.response.headers.get("Retry-After")
        except openai.APITimeoutError:
            raise TransportError("timeout", f"no answer within {self.endpoint.request_timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            kind = "unreachable" if isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout)) else "connection_error"
            raise TransportError(kind, f"{type(cause or exc).__name__}: {cause or exc}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def make_transport(name: str, endpoint: EndpointConfig, max_connections: int):
    if name == "aiohttp":
        return AiohttpTransport(endpoint, max_connections)
    if name == "openai":
        return OpenAITransport(endpoint, max_connections)
    raise ValueError(f"unknown transport {name!r}: use 'aiohttp' or 'openai'")
