"""The gate's aiohttp app and the :class:`Gate` tying classification, admission and the
proxy together, with the gate's metrics and its part of /status.

Channel-creating requests (DESIGN section 7) are admitted only while the breaker allows,
under a concurrency cap with a bounded queue wait and an optional creation-rate cap.
Everything else passes untouched. Responses stream; request bodies (small OpenAI-style
JSON) are read whole, up to `gate.max_body`, because creates must be inspected for
`channelId`. The gate fails open when the health machinery itself is broken.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from monitor.clock import Clock
from monitor.config import GateConfig
from monitor.gate.admission import CreateAdmission, Refusal
from monitor.gate.classify import CHAT_PATHS, EXPLICIT_CREATE_PATHS, is_create_request, routed_path
from monitor.gate.proxy import Outcome, Proxy, error_response
from monitor.health.owner import Health
from monitor.health.window import Sample
from monitor.httpserve import ERRORS, LIMITS, BodyTimeout, Limits, read_body
from monitor.metrics import Metrics

# Paths whose bodies decide a create: their bodies must reach CDP as the gate read them.
_INSPECTED_PATHS = CHAT_PATHS | EXPLICIT_CREATE_PATHS


class Ledger(Protocol):
    """What the gate tells the request ledger (monitor.ledger.RequestLedger)."""

    def opened(self, request_id: str, now: float) -> None: ...

    def completed(self, request_id: str, now: float) -> None: ...

    def failed(self, request_id: str, now: float) -> None: ...


class Gate:
    """The gate. `samples`: whether create outcomes feed the health window
    (`signals.gate`)."""

    def __init__(
        self,
        config: GateConfig,
        *,
        health: Health,
        metrics: Metrics,
        clock: Clock,
        logger: logging.Logger,
        session: aiohttp.ClientSession,
        samples: bool = True,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self._health = health
        self._metrics = metrics
        self._clock = clock
        self._samples = samples
        self._ledger = ledger
        self._admission = CreateAdmission(
            config, health=health, metrics=metrics, clock=clock, logger=logger
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=config.upstream_timeout
        )
        self._proxy = Proxy(config.upstream, session=session, timeout=timeout, logger=logger)
        self._inflight: Counter[str] = Counter()
        self._decisions: Counter[str] = Counter()
        # Labelled metric children, looked up once each: `labels()` costs a lock and
        # validation on every call, a measurable share of a proxied request.
        self._requests_child: dict[tuple[str, str], PromCounter] = {}
        self._inflight_child: dict[str, Gauge] = {}
        self._duration_child: dict[str, Histogram] = {}

    @property
    def fail_open(self) -> bool:
        return self._admission.fail_open

    def status(self) -> dict[str, Any]:
        return {
            "upstream": self.config.upstream,
            "inflight": dict(self._inflight),
            "waiting": self._admission.waiting,
            "fail_open": self._admission.fail_open,
            "decisions": dict(self._decisions),
            "max_concurrent_creates": self.config.max_concurrent_creates,
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body)
        app[LIMITS] = Limits(
            header_timeout=self.config.header_timeout,
            body_timeout=self.config.body_timeout,
            idle_timeout=self.config.idle_timeout,
            max_connections=self.config.max_connections,
        )
        app[ERRORS] = error_response
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # -- metrics --------------------------------------------------------------------

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

    # -- request handling -----------------------------------------------------------

    def _too_large(self) -> web.Response:
        self._count("other", "too_large")
        limit = self.config.max_body
        return error_response(413, "body_too_large", f"request body over {limit} bytes")

    def _refuse_request(self, status: int, code: str, message: str) -> web.Response:
        self._count("other", code)
        return error_response(status, code, message)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = self._clock.monotonic()
        # The raw target is what CDP receives (forwarded unchanged), so classify it,
        # not aiohttp's normalised view of it.
        path = routed_path(request.raw_path)
        if path is None:
            return self._refuse_request(400, "invalid_path", "ambiguous request path")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity" and path.rstrip("/") in _INSPECTED_PATHS:
            # CDP reads these bodies undecoded; refuse rather than guess what it sees.
            return self._refuse_request(
                415, "unsupported_content_encoding", "compressed request bodies are not accepted"
            )
        length = request.content_length
        if length is not None and length > self.config.max_body:
            return self._too_large()
        try:
            # Reads to the end; the app's client_max_size (gate.max_body) caps it.
            body = await read_body(request)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except BodyTimeout as exc:
            return self._refuse_request(408, "body_timeout", str(exc))
        except (aiohttp.ClientPayloadError, ConnectionError):
            return self._refuse_request(400, "bad_request", "could not read the request body")
        create = is_create_request(
            request.method, path, body, cdp_default_channel=self.config.cdp_default_channel
        )
        if not create:
            return await self._forward(request, body, started, create=False)
        return await self._handle_create(request, body, started)

    def _refuse(self, refusal: Refusal) -> web.Response:
        self._count("create", refusal.decision)
        return error_response(503, refusal.code, refusal.message, refusal.retry_after)

    async def _handle_create(
        self, request: web.Request, body: bytes, started: float
    ) -> web.StreamResponse:
        refusal = await self._admission.admit()
        if refusal is not None:
            return self._refuse(refusal)
        if self._admission.fail_open:
            self._count("create", "fail_open")
        refusal = await self._admission.acquire()
        if refusal is not None:
            return self._refuse(refusal)
        try:
            return await self._forward(request, body, started, create=True)
        finally:
            self._admission.release()

    async def _forward(
        self, request: web.Request, body: bytes, started: float, *, create: bool
    ) -> web.StreamResponse:
        kind = "create" if create else "other"
        self._inflight[kind] += 1
        self._inflight_gauge(kind).inc()
        outcome: Outcome | None = None
        opened = self._opened if create and self._ledger is not None else None
        try:
            outcome = await self._proxy.forward(request, body, create=create, on_request_id=opened)
            self._count(kind, outcome.decision)
            return outcome.response
        finally:
            self._inflight[kind] -= 1
            self._inflight_gauge(kind).dec()
            duration = self._clock.monotonic() - started
            self._duration_histogram(kind).observe(duration)
            if create:
                self._record_create(outcome, duration)

    def _opened(self, request_id: str) -> None:
        assert self._ledger is not None
        self._ledger.opened(request_id, self._clock.time())

    def _record_create(self, outcome: Outcome | None, duration: float) -> None:
        """Feed the health window and finish the ledger entry for one create. No outcome
        (the handler was cancelled mid-request) counts as a failure, as it always has."""
        now = self._clock.time()
        ok = False if outcome is None else outcome.ok
        if ok is not None and self._samples:
            self._health.add_sample(Sample("gate", now, ok, duration))
        if outcome is None or not outcome.finished or not outcome.request_id:
            return
        if self._ledger is not None:
            if outcome.ok:
                self._ledger.completed(outcome.request_id, now)
            else:
                self._ledger.failed(outcome.request_id, now)
