"""HTTP transports of the engine: both take the request as an EncodedBody (serialised once by
`encode_body`), return (status, body bytes, Retry-After) or raise TransportError; the engine
gives the answers OpenAI semantics.

"aiohttp" (default): measured at about 0.2 ms of client CPU per request against about 1.6 ms for
the openai client on httpx (benchmarks/bench_client.py); at C=64 and 0.2 s latency on 2 cores
that difference decides whether the server is kept saturated.
"openai": the AsyncOpenAI client (httpx), kept for parity and as a fallback.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import re
import secrets
from typing import Any, Callable

import aiohttp
import aiohttp.payload

from .config import EndpointConfig
from .images import LazyImage

try:  # orjson encodes a 270 KB base64 image about 10x faster than json
    import orjson

    def dumps(obj: Any, default=None) -> bytes:
        return orjson.dumps(obj, default=default)

    loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: Any, default=None) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=default).encode()

    loads = json.loads


# Stands in for a LazyImage in the body's skeleton; the nonce keeps it out of reach of real text.
_MARK = f"lazy-image-{secrets.token_hex(8)}-"
_MARK_RE = re.compile(b'"' + re.escape(_MARK.encode()) + rb'(\d+)"')


class EncodedBody:
    """A request body serialised except for its lazy images, whose size is known exactly.

    `size` is the byte length of the finished body. `build()` writes it into one buffer of that
    size, reading and base64-encoding one image at a time (the body plus one page, never a
    base64 string per page plus the body). A body with lazy images holds no image bytes itself:
    the aiohttp transport builds it when the request is written and drops it once sent, and a
    retry builds it again, byte for byte the same.
    """

    __slots__ = ("size", "_pieces", "_images")

    def __init__(self, pieces: list[bytes], images: list[LazyImage]):
        self._pieces = pieces  # text between the images: len(images) + 1 pieces
        self._images = images
        # each image: '"' + prefix + base64 + '"'
        self.size = sum(map(len, pieces)) + sum(image.url_length() + 2 for image in images)

    @property
    def lazy(self) -> bool:
        return bool(self._images)

    def build(self) -> bytes | bytearray:
        if not self._images:
            return self._pieces[0]
        buf = bytearray(self.size)
        view = memoryview(buf)
        pos = 0

        def put(data: bytes) -> None:
            nonlocal pos
            view[pos : pos + len(data)] = data
            pos += len(data)

        for piece, image in zip(self._pieces, self._images):
            put(piece)
            put(b'"' + image.prefix().encode("ascii"))
            put(binascii.b2a_base64(image.load(), newline=False))
            put(b'"')
        put(self._pieces[-1])
        view.release()
        if pos != self.size:  # pragma: no cover - a bug in the size arithmetic
            raise RuntimeError(f"encoded body is {pos} bytes, {self.size} announced")
        return buf


def encode_body(body: dict) -> EncodedBody:
    """Serialise `body` once, leaving each LazyImage (a base64 image part's url) to `build`."""
    images: list[LazyImage] = []

    def stand_in(obj: Any) -> str:
        if isinstance(obj, LazyImage):
            images.append(obj)
            return f"{_MARK}{len(images) - 1}"
        raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")

    skeleton = dumps(body, default=stand_in)
    if not images:
        return EncodedBody([skeleton], [])
    parts = _MARK_RE.split(skeleton)
    pieces, order = parts[0::2], [int(i) for i in parts[1::2]]
    if order != list(range(len(images))):  # pragma: no cover - the nonce makes this impossible
        raise RuntimeError("lazy image placeholders out of order")
    return EncodedBody(pieces, images)


# Bodies are written in slices of this size, waiting for the socket between them: on Python
# 3.11 the socket transport copies whatever one write leaves unsent, which for a whole document
# of base64 pages would double the body per request while it goes out. Plain bodies up to
# _SLICE_FROM (text, a page or two given as base64 strings) go out as they are.
_SLICE = 2**18
_SLICE_FROM = 2**20


class _BodyPayload(aiohttp.payload.Payload):
    """An EncodedBody with lazy images (or a large one): built when aiohttp writes the request,
    written in slices, then dropped; `sent()` is called once it is out (or failed to go out).
    A second write (aiohttp resending on a stale keep-alive connection) builds it again."""

    _autoclose = True  # holds no resource; nothing to close

    def __init__(self, body: EncodedBody, sent: Callable[[], None] | None):
        super().__init__(body, content_type="application/json")
        self._size = body.size
        self._sent = sent

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value.build()).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return bytes(self._value.build())

    async def write(self, writer) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer, content_length: int | None) -> None:
        try:
            view = memoryview(self._value.build())
            end = len(view) if content_length is None else min(len(view), content_length)
            for start in range(0, end, _SLICE):
                await writer.write(view[start : min(end, start + _SLICE)])
            del view
        finally:
            if self._sent is not None:
                self._sent()


async def _stream(body: EncodedBody, sent: Callable[[], None] | None):
    try:
        view = memoryview(body.build())
        for start in range(0, len(view), _SLICE):
            yield bytes(view[start : start + _SLICE])
        del view
    finally:
        if sent is not None:
            sent()


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
        self._timeout = aiohttp.ClientTimeout(total=endpoint.request_timeout_s, sock_connect=endpoint.connect_timeout_s)
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

    async def request(
        self, method: str, path: str, body: EncodedBody | None = None, sent: Callable[[], None] | None = None
    ) -> Response:
        """`sent` is called once the body is written (the engine then frees its payload budget)."""
        session = self._get_session()
        # a path under base_url, or a whole URL (the server's root routes, e.g. /tokenize)
        url = path if "://" in path else self.endpoint.base_url + path
        data: Any = None
        if body is not None:
            # small plain bodies as they are (the common text request: no extra work per request)
            data = _BodyPayload(body, sent) if body.lazy or body.size > _SLICE_FROM else body.build()
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

    async def request(
        self, method: str, path: str, body: EncodedBody | None = None, sent: Callable[[], None] | None = None
    ) -> Response:
        import httpx2
        import openai

        client = self._get_client()
        try:
            if method == "GET":
                resp = await client.get(path, cast_to=httpx2.Response)
            else:
                if body is not None and (body.lazy or body.size > _SLICE_FROM):
                    # built as it goes out and dropped once sent, as with aiohttp; the length
                    # header keeps the request as it would be with the bytes (not chunked)
                    resp = await client.post(
                        path,
                        cast_to=httpx2.Response,
                        content=_stream(body, sent),
                        options={"headers": {"Content-Length": str(body.size)}},
                    )
                else:
                    content = body.build() if body is not None else None
                    resp = await client.post(path, cast_to=httpx2.Response, content=content)
            return resp.status_code, resp.content, resp.headers.get("Retry-After")
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.content, exc.response.headers.get("Retry-After")
        except openai.APITimeoutError:
            raise TransportError("timeout", f"no answer within {self.endpoint.request_timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            kind = (
                "unreachable" if isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout)) else "connection_error"
            )
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
