"""httpx transports that send chat completions through a :class:`~tollgate.Tollgate`, so the
official ``openai`` SDK (and anything else built on httpx) goes through tollgate::

    client = openai.OpenAI(
        api_key="unused",  # the policy holds the credentials
        http_client=httpx.Client(transport=tg.transport(tenant="acme")),
    )

``POST .../chat/completions`` is sent with :meth:`Tollgate.send` (or streamed event by event
with :meth:`Tollgate.stream` when the body asks for ``"stream": true``); the upstream, model
routing and credentials come from the policy, so the client's base URL and API key are not
used. tollgate's errors become the HTTP answers ``tollgate serve`` gives (a budget's refusal is
a 429 the SDK raises as ``openai.RateLimitError``), all with ``x-should-retry: false``: tollgate
already waited and retried as the policy says, so the SDK does not retry on top. Other
requests go to ``fallback`` (default: a 404 answer). The request header ``x-tollgate-tenant``
overrides the transport's tenant.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterator, List, Optional, Tuple

import httpx

from ._core import CacheMode, Options, Seconds, Tollgate, _native_call, _options
from ._errors import TollgateError, from_native
from ._native import NativeError

__all__ = ["TollgateTransport", "AsyncTollgateTransport"]


class _Options:
    def __init__(
        self,
        tg: Tollgate,
        tenant: Optional[str],
        route: Optional[str],
        upstream: Optional[str],
        priority: int,
        deadline: Optional[Seconds],
        cache: Optional[CacheMode],
    ) -> None:
        if not isinstance(tg, Tollgate):
            raise TypeError(f"the transport needs a Tollgate, not {type(tg).__name__}")
        self.tg = tg
        self.options: Options = _options(tenant, route, upstream, priority, deadline, cache)

    def handles(self, request: httpx.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith("/chat/completions")

    def args(self, request: httpx.Request, body: bytes) -> Tuple[bytes, Options]:
        tenant = request.headers.get("x-tollgate-tenant")
        if tenant is None:
            return body, self.options
        return body, (tenant,) + self.options[1:]


def _is_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        return json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        return False


def _answer(status: int, meta: str, raw: bytes, request: httpx.Request) -> httpx.Response:
    m = json.loads(meta)
    return httpx.Response(
        status,
        headers=[
            ("content-type", "application/json"),
            ("x-tollgate-source", m["source"]),
            ("x-tollgate-attempts", str(m["attempts"])),
        ],
        content=raw,
        request=request,
    )


def _error(e: TollgateError, request: httpx.Request) -> httpx.Response:
    answer = e.answer
    if answer is None:  # not a call's error (a bad option): the client's request is wrong
        answer = (
            400,
            [("content-type", "application/json"), ("x-should-retry", "false")],
            json.dumps({"error": {"message": str(e), "type": "invalid_request_error", "param": None, "code": e.code}}),
        )
    status, headers, body = answer
    return httpx.Response(status, headers=headers, content=body.encode(), request=request)


def _not_here(request: httpx.Request) -> httpx.Response:
    body = {
        "error": {
            "message": f"tollgate's transport sends chat completions only, not {request.method} {request.url.path}; "
            "give the transport a fallback for other requests",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }
    return httpx.Response(
        404,
        headers=[("content-type", "application/json"), ("x-should-retry", "false")],
        content=json.dumps(body).encode(),
        request=request,
    )


_STREAM_HEADERS: List[Tuple[str, str]] = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class _SyncEvents(httpx.SyncByteStream):
    def __init__(self, native: Any) -> None:
        self._native = native

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                _, _, encoded, done, _ = self._native.read(True)
            except NativeError:  # the stream's own errors arrive as an error event
                return
            if encoded:
                yield encoded
            if done:
                return

    def close(self) -> None:
        self._native.close()


class _AsyncEvents(httpx.AsyncByteStream):
    def __init__(self, native: Any) -> None:
        self._native = native

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                _, _, encoded, done, _ = await _native_call(self._native.read_async, True)
            except TollgateError:
                return
            if encoded:
                yield encoded
            if done:
                return

    async def aclose(self) -> None:
        self._native.close()


class TollgateTransport(httpx.BaseTransport):
    """An httpx transport over :meth:`Tollgate.send` and :meth:`Tollgate.stream` (blocking;
    the GIL is released while a call waits)."""

    def __init__(
        self,
        tg: Tollgate,
        *,
        tenant: Optional[str] = None,
        route: Optional[str] = None,
        upstream: Optional[str] = None,
        priority: int = 0,
        deadline: Optional[Seconds] = None,
        cache: Optional[CacheMode] = None,
        fallback: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self._o = _Options(tg, tenant, route, upstream, priority, deadline, cache)
        self._fallback = fallback

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Sends ``request`` through tollgate (chat completions) or the fallback."""
        if not self._o.handles(request):
            if self._fallback is not None:
                return self._fallback.handle_request(request)
            return _not_here(request)
        body = request.read()
        args = self._o.args(request, body)
        engine = self._o.tg._e
        try:
            if _is_stream(body):
                native = engine.stream(*args)
                return httpx.Response(200, headers=_STREAM_HEADERS, stream=_SyncEvents(native), request=request)
            status, raw, meta = engine.send(*args)
        except NativeError as e:
            return _error(from_native(e), request)
        return _answer(status, meta, raw, request)

    def close(self) -> None:
        """Closes the fallback (the Tollgate stays open)."""
        if self._fallback is not None:
            self._fallback.close()


class AsyncTollgateTransport(httpx.AsyncBaseTransport):
    """An httpx transport over :meth:`Tollgate.asend` and :meth:`Tollgate.astream`: the event
    loop never blocks, and a cancelled request cancels its call."""

    def __init__(
        self,
        tg: Tollgate,
        *,
        tenant: Optional[str] = None,
        route: Optional[str] = None,
        upstream: Optional[str] = None,
        priority: int = 0,
        deadline: Optional[Seconds] = None,
        cache: Optional[CacheMode] = None,
        fallback: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self._o = _Options(tg, tenant, route, upstream, priority, deadline, cache)
        self._fallback = fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Sends ``request`` through tollgate (chat completions) or the fallback."""
        if not self._o.handles(request):
            if self._fallback is not None:
                return await self._fallback.handle_async_request(request)
            return _not_here(request)
        body = await request.aread()
        args = self._o.args(request, body)
        engine = self._o.tg._e
        try:
            if _is_stream(body):
                native = await _native_call(engine.stream_async, *args)
                return httpx.Response(200, headers=_STREAM_HEADERS, stream=_AsyncEvents(native), request=request)
            status, raw, meta = await _native_call(engine.send_async, *args)
        except TollgateError as e:
            return _error(e, request)
        return _answer(status, meta, raw, request)

    async def aclose(self) -> None:
        """Closes the fallback (the Tollgate stays open)."""
        if self._fallback is not None:
            await self._fallback.aclose()
