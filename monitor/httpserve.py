"""Starting an aiohttp app on a host and port (0 = a free port), shared by every server,
with the limits a public listener needs against slow and idle clients.

An app may carry :class:`Limits` (`app[LIMITS]`) and an error-body maker
(`app[ERRORS]`). The listener then closes a connection whose request headers do not
arrive within `header_timeout` and one idle between requests for `idle_timeout`, holds
at most `max_connections` (making room by closing the oldest idle one), answers
protocol errors with JSON, and logs client mistakes as single, rate-limited lines
(never tracebacks). Request bodies are read under `body_timeout` by :func:`read_body`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

ErrorMaker = Callable[[int, str, str], web.Response]


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 30.0
    max_connections: int = 1024


def json_error(status: int, code: str, message: str) -> web.Response:
    """The default error body: `{"error": "..."}` (the control API's shape)."""
    return web.json_response({"error": message, "code": code}, status=status)


LIMITS = web.AppKey("httpserve_limits", Limits)
ERRORS: web.AppKey[ErrorMaker] = web.AppKey("httpserve_errors")


class BodyTimeout(Exception):
    """The client did not send its request body within `body_timeout`."""


async def read_body(request: web.Request) -> bytes:
    """The whole request body, read under the app's `body_timeout` (BodyTimeout)."""
    limits = request.app.get(LIMITS) or Limits()
    try:
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {limits.body_timeout:g}s") from None


def descriptor_pressure() -> dict[str, Any]:
    """Open file descriptors against RLIMIT_NOFILE (for /healthz)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = None if soft == resource.RLIM_INFINITY else soft
    try:
        used: int | None = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return {"open": limit, "limit": limit, "ratio": 1.0}  # cannot even look
        used = None  # not Linux
    ratio = round(used / limit, 4) if used is not None and limit else None
    return {"open": used, "limit": limit, "ratio": ratio}


class LogLimiter:
    """At most `burst` client-error lines, refilled at `per_minute`; the rest are counted
    and the count reported with the next line let through."""

    def __init__(self, per_minute: float = 10.0, burst: int = 10) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False


_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: 55\r\n\r\n"
    b'{"error": "too many connections", "code": "overloaded"}'
)


class _Listener:
    """State shared by the connections of one listener."""

    def __init__(self, limits: Limits, errors: ErrorMaker) -> None:
        self.limits = limits
        self.errors = errors
        self.open: OrderedDict[GuardedHandler, None] = OrderedDict()
        self.log = LogLimiter()

    def make_room(self) -> bool:
        """Close the oldest idle connection if the listener is full; False: all busy."""
        if len(self.open) < self.limits.max_connections:
            return True
        for handler in self.open:
            if handler.idle:
                handler.force_close()
                self.open.pop(handler, None)
                return True
        return False


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler with a header timeout, a connection cap, JSON error
    answers and rate-limited client-error logging."""

    def __init__(self, manager: web.Server, *, listener: _Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._header_timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """Waiting for a request's headers (none being handled)."""
        return self._waiter is not None and not self._waiter.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        room = self._listener.make_room()
        super().connection_made(transport)
        if not room:
            transport.write(_REFUSED)  # type: ignore[attr-defined]
            self.force_close()
            transport.close()
            return
        self._listener.open[self] = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.open.pop(self, None)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.idle:
            self._header_timer = self._loop.call_later(
                self._listener.limits.header_timeout, self._headers_late
            )
        super().data_received(data)
        if self._messages or not self.idle:
            self._cancel_header_timer()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.idle:
            self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already sent")
        code = "bad_request" if status < 500 else "internal_error"
        text = "malformed HTTP request" if status < 500 else "internal error"
        response = self._listener.errors(status, code, text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if not self._listener.log.allow(self._loop.time()):
            return
        suppressed, self._listener.log.suppressed = self._listener.log.suppressed, 0
        more = f" ({suppressed} similar suppressed)" if suppressed else ""
        if isinstance(exc, HttpProcessingError | ConnectionError | TimeoutError | BodyTimeout):
            # A client's mistake: one line, no traceback, nothing it sent verbatim.
            name = type(exc).__name__
            self.logger.warning("client error from %s: %s%s", self.peer, name, more)
        else:
            self.logger.error("%s%s", args[0] % args[1:] if args else "error", more, exc_info=exc)

    @property
    def peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) else "?"


class _GuardedSite(web.TCPSite):
    """A TCPSite whose connections are :class:`GuardedHandler`s."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, listener: _Listener) -> None:
        super().__init__(runner, host, port)
        self._listener = listener

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        kwargs = _handler_kwargs(self._listener.limits)

        def factory() -> GuardedHandler:
            assert server is not None
            return GuardedHandler(server, listener=self._listener, loop=loop, **kwargs)

        self._server = await loop.create_server(
            factory, self._host, self._port, reuse_address=True, backlog=1024
        )


def _handler_kwargs(limits: Limits) -> dict[str, Any]:
    return {
        "keepalive_timeout": limits.idle_timeout,
        "access_log": None,
        # Request bodies reach the app exactly as sent (the gate forwards them).
        "auto_decompress": False,
    }


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns its runner (call `cleanup()` to stop) and the bound port.

    Raises OSError (nothing left running) when the address cannot be bound.
    """
    limits = app.get(LIMITS) or Limits()
    listener = _Listener(limits, app.get(ERRORS) or json_error)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=1.0, **_handler_kwargs(limits)
    )
    await runner.setup()
    try:
        await _GuardedSite(runner, host, port, listener).start()
    except OSError:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    return runner, bound
