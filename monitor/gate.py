"""The gate: a streaming reverse proxy in front of CDP with admission control.

Channel-creating requests (DESIGN section 7) are admitted only while the breaker allows,
under a concurrency cap with a bounded queue wait and an optional creation-rate cap.
Everything else passes untouched. Responses stream; request bodies (small OpenAI-style
JSON) are read whole, up to `gate.max_body`, because creates must be inspected for
`channelId`. The gate fails open when the health machinery itself is broken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from monitor.clock import Clock
from monitor.config import GateConfig
from monitor.health.breaker import HealthBreaker
from monitor.health.window import Sample
from monitor.metrics import Metrics

CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/images/generations"})
EXPLICIT_CREATE_PATHS = frozenset({"/api/channel/create", "/api/thread/create"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Response bodies that say CDP's channel creation failed because of Discord.
FAILURE_MARKERS = (b"30013", b"Maximum number of server channels", b"failed after 3 attempts")
MAX_RETRY_AFTER = 120
_FAILURE_PEEK = 64 * 1024  # bytes of an error body searched for the markers
# A fixed-length upstream body up to this size is read whole and sent with the headers
# in one write (a StreamResponse sends its headers on their own first); bigger or
# chunked (SSE) bodies stream.
_BUFFER_MAX = 64 * 1024
_DROP_FORWARD = HOP_BY_HOP | {"host", "content-length"}


class Ledger(Protocol):
    """What the gate tells the request ledger (monitor.ledger.RequestLedger)."""

    def opened(self, request_id: str, now: float) -> None: ...

    def completed(self, request_id: str, now: float) -> None: ...

    def failed(self, request_id: str, now: float) -> None: ...


def new_upstream_session() -> aiohttp.ClientSession:
    """A session that changes nothing: no decompression, no cookies, no added headers."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        connector=aiohttp.TCPConnector(limit=0),
    )


def is_create_request(method: str, path: str, body: bytes, *, cdp_default_channel: bool) -> bool:
    """Whether CDP would create a channel for this request (DESIGN section 7)."""
    if method != "POST":
        return False
    path = path.rstrip("/") or "/"
    if path in EXPLICIT_CREATE_PATHS:
        return True
    if path not in CHAT_PATHS or cdp_default_channel:
        return False
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return True  # CDP will fail on it; if it does not, it creates a channel
    if not isinstance(data, dict):
        return True
    channel_id = data.get("channelId")
    return not (isinstance(channel_id, str | int) and str(channel_id).strip())


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    body = {"error": {"message": message, "type": "server_error", "code": code}}
    if status == 413:
        body["error"]["type"] = "invalid_request_error"
    return web.json_response(body, status=status, headers=headers)


def _drop_set(base: frozenset[str], headers: CIMultiDictProxy[str]) -> frozenset[str]:
    connection = headers.get("Connection")
    if not connection:
        return base
    return base | {token.strip().lower() for token in connection.split(",")}


def _forward_headers(headers: CIMultiDictProxy[str], remote: str | None) -> CIMultiDict[str]:
    drop = _drop_set(_DROP_FORWARD, headers)
    out = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)
    if remote:
        prior = headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
    return out


def _response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _drop_set(HOP_BY_HOP, headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class RateCap:
    """Token bucket for channel creations per second (0 = unlimited)."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = max(1.0, rate)
        self._stamp = clock.monotonic()

    def wait_time(self) -> float:
        """Reserve a token; returns how long to wait for it (0 = now)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock.monotonic()
        self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self) -> None:
        if self.rate > 0:
            self._tokens += 1.0


class Gate:
    def __init__(
        self,
        config: GateConfig,
        *,
        breaker: Callable[[], HealthBreaker],
        metrics: Metrics,
        clock: Clock,
        logger: logging.Logger,
        session: aiohttp.ClientSession,
        health_ok: Callable[[], bool],
        add_sample: Callable[[Sample], None] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self._breaker = breaker  # a getter: the daemon may swap the breaker on reload
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._session = session
        self._health_ok = health_ok
        self._add_sample = add_sample
        self._ledger = ledger
        self._slots = asyncio.Semaphore(config.max_concurrent_creates)
        self._rate = RateCap(config.create_rate, clock)
        self._inflight: Counter[str] = Counter()
        self._decisions: Counter[str] = Counter()
        self._waiting = 0
        self._last_fail_open_log = 0.0
        self.fail_open = False
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=config.upstream_timeout
        )
        # Labelled metric children, looked up once each: `labels()` costs a lock and
        # validation on every call, a measurable share of a proxied request.
        self._requests_child: dict[tuple[str, str], PromCounter] = {}
        self._inflight_child: dict[str, Gauge] = {}
        self._duration_child: dict[str, Histogram] = {}

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "upstream": self.config.upstream,
            "inflight": dict(self._inflight),
            "waiting": self._waiting,
            "fail_open": self.fail_open,
            "decisions": dict(self._decisions),
            "max_concurrent_creates": self.config.max_concurrent_creates,
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # -- request handling -----------------------------------------------------------

    def _count(self, kind: str, decision: str) -> None:
        self._decisions[decision] += 1
        child = self._requests_child.get((kind, decision))
        if child is None:
            child = self._metrics.gate_requests.labels(kind=kind, decision=decision)
            self._requests_child[(kind, decision)] = child
        child.inc()

    def _inflight_gauge(self, kind: str) -> Gauge:
        child = self._inflight_child.get(kind)
        if child is None:
            child = self._inflight_child[kind] = self._metrics.gate_inflight.labels(kind=kind)
        return child

    def _duration_histogram(self, kind: str) -> Histogram:
        child = self._duration_child.get(kind)
        if child is None:
            child = self._metrics.gate_request_duration.labels(kind=kind)
            self._duration_child[kind] = child
        return child

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        length = request.content_length
        if length is not None and length > self.config.max_body:
            self._count("other", "too_large")
            return _error(413, "body_too_large", f"request body over {self.config.max_body} bytes")
        try:
            # Reads to the end; the app's client_max_size (gate.max_body) caps it.
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count("other", "too_large")
            return _error(413, "body_too_large", f"request body over {self.config.max_body} bytes")
        except (aiohttp.ClientPayloadError, ConnectionError):
            return _error(400, "bad_request", "could not read the request body")
        create = is_create_request(
            request.method,
            request.path,
            body,
            cdp_default_channel=self.config.cdp_default_channel,
        )
        kind = "create" if create else "other"
        if not create:
            return await self._forward(request, body, kind, started, create=False)
        return await self._handle_create(request, body, started)

    async def _handle_create(
        self, request: web.Request, body: bytes, started: float
    ) -> web.StreamResponse:
        refusal = await self._admit()
        if refusal is not None:
            return refusal
        deadline = time.monotonic() + self.config.queue_wait
        self._waiting += 1
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), self.config.queue_wait)
            else:
                await self._slots.acquire()  # free slot: no wait_for (a 0s wait would refuse)
        except TimeoutError:
            self._count("create", "queue_full")
            return _error(
                503,
                "create_queue_full",
                f"more than {self.config.max_concurrent_creates} channel-creating requests "
                "in flight; try again shortly",
                retry_after=1,
            )
        finally:
            self._waiting -= 1
        try:
            wait = self._rate.wait_time()
            if wait > 0 and wait > deadline - time.monotonic():
                self._rate.refund()
                self._count("create", "queue_full")
                return _error(
                    503,
                    "create_queue_full",
                    f"channel creation is capped at {self.config.create_rate}/s",
                    retry_after=max(1, math.ceil(wait)),
                )
            if wait > 0:
                await asyncio.sleep(wait)
            return await self._forward(request, body, "create", started, create=True)
        finally:
            self._slots.release()

    async def _admit(self) -> web.Response | None:
        """None to admit; else the refusal. Fails open if the health machinery is broken."""
        # A deliberate pause needs no health verdict, so it holds even when failing open.
        if not self._health_ok() and self._breaker().state != "forced_open":
            self.fail_open = True
            self._metrics.gate_fail_open.set(1)
            now = time.monotonic()
            if now - self._last_fail_open_log > 30:
                self._last_fail_open_log = now
                self._log.error(
                    "gate failing open: no fresh health evaluation; forwarding creates unchecked"
                )
            self._count("create", "fail_open")
            return None
        self.fail_open = False
        self._metrics.gate_fail_open.set(0)
        deadline = time.monotonic() + (
            self.config.hold_max if self.config.when_open == "hold" else 0.0
        )
        while True:
            breaker = self._breaker()
            now = self._clock.time()
            if breaker.try_admit_create(now):
                return None
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        breaker = self._breaker()
        now = self._clock.time()
        retry_after = int(min(MAX_RETRY_AFTER, max(1, breaker.retry_after(now))))
        if breaker.state == "forced_open":
            paused = breaker.paused or {}
            self._count("create", "refused_paused")
            reason = paused.get("reason") or "paused by the operator"
            # DESIGN section 7: a pause answers like an open breaker (one code for clients
            # to handle); the message and the metric's decision tell them apart.
            return _error(
                503,
                "discord_unstable",
                f"channel creation is paused by the operator ({reason}); "
                f"retry after {retry_after}s",
                retry_after,
            )
        self._count("create", "refused_unstable")
        return _error(
            503,
            "discord_unstable",
            f"Discord is unstable; channel creation is paused, retry after {retry_after}s",
            retry_after,
        )

    async def _forward(
        self, request: web.Request, body: bytes, kind: str, started: float, *, create: bool
    ) -> web.StreamResponse:
        url = self.config.upstream.rstrip("/") + request.rel_url.raw_path_qs
        headers = _forward_headers(request.headers, request.remote)
        self._inflight[kind] += 1
        self._inflight_gauge(kind).inc()
        # Outcome of a create: `ok` feeds the health window (None: no sample), and the
        # ledger entry is finished only when CDP is known to be done with the request.
        ok: bool | None = False
        finished = False
        request_id: str | None = None
        try:
            try:
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body if body else None,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
            except aiohttp.ClientError as exc:
                # CDP down or resetting is CDP's trouble, not Discord's: no health sample.
                ok = None
                return self._upstream_unavailable(kind, exc)
            except TimeoutError:
                self._count(kind, "upstream_timeout")
                return _error(504, "upstream_timeout", "CDP (the upstream) did not answer in time")
            async with upstream:
                request_id = upstream.headers.get("X-Request-Id")
                if create and request_id and self._ledger is not None:
                    self._ledger.opened(request_id, self._clock.time())
                length = upstream.content_length
                if length is not None and length <= _BUFFER_MAX:
                    try:
                        data = await upstream.read()
                    except TimeoutError:
                        self._count(kind, "upstream_timeout")
                        return _error(
                            504, "upstream_timeout", "CDP (the upstream) did not answer in time"
                        )
                    except aiohttp.ClientError as exc:
                        ok = None
                        return self._upstream_unavailable(kind, exc)
                    failure_seen = (
                        create
                        and upstream.status >= 400
                        and any(m in data for m in FAILURE_MARKERS)
                    )
                    ok = upstream.status < 500 and not failure_seen
                    finished = True
                    self._count(kind, "forwarded")
                    return web.Response(
                        status=upstream.status,
                        reason=upstream.reason,
                        headers=_response_headers(upstream.headers),
                        body=data,
                    )
                response = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=_response_headers(upstream.headers),
                )
                await response.prepare(request)
                failure_seen = False
                peeked = 0
                try:
                    async for chunk in upstream.content.iter_any():
                        if create and upstream.status >= 400 and peeked < _FAILURE_PEEK:
                            peeked += len(chunk)
                            failure_seen = failure_seen or any(m in chunk for m in FAILURE_MARKERS)
                        await response.write(chunk)
                    await response.write_eof()
                except TimeoutError:
                    # CDP went quiet mid-answer: a failure, but CDP may still be using the
                    # channel, so the ledger keeps the request open (its channel protected).
                    self._count(kind, "upstream_timeout")
                    return response
                except ConnectionResetError:
                    # The client went away mid-stream: not Discord's fault, no sample; CDP
                    # finishes the request on its own.
                    self._count(kind, "client_disconnected")
                    ok = None
                    return response
                except aiohttp.ClientError as exc:
                    # CDP broke off mid-answer (crash, reset): headers are gone, so just
                    # count it; not Discord's fault.
                    self._count(kind, "upstream_unavailable")
                    self._log.warning("gate: upstream broke off mid-answer: %s", exc)
                    ok = None
                    return response
                ok = upstream.status < 500 and not failure_seen
                finished = True
                self._count(kind, "forwarded")
                return response
        finally:
            self._inflight[kind] -= 1
            self._inflight_gauge(kind).dec()
            duration = time.monotonic() - started
            self._duration_histogram(kind).observe(duration)
            if create:
                self._record_create(ok, finished, request_id, duration)

    def _upstream_unavailable(self, kind: str, exc: Exception) -> web.Response:
        self._count(kind, "upstream_unavailable")
        self._log.warning("gate: upstream %s unreachable: %s", self.config.upstream, exc)
        return _error(502, "upstream_unavailable", "CDP (the upstream) is unreachable")

    def _record_create(
        self, ok: bool | None, finished: bool, request_id: str | None, duration: float
    ) -> None:
        now = self._clock.time()
        if ok is not None and self._add_sample is not None:
            self._add_sample(Sample("gate", now, ok, duration))
        if finished and request_id and self._ledger is not None:
            if ok:
                self._ledger.completed(request_id, now)
            else:
                self._ledger.failed(request_id, now)
