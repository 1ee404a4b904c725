"""The gate's aiohttp app and the :class:`Gate` tying classification, admission and the
proxy together, with the gate's metrics and its part of /status.

Channel-creating requests (DESIGN section 7) are admitted only while the breaker allows,
under a concurrency cap with a bounded queue wait and an optional creation-rate cap, and
their answers are attributed (monitor/gate/attribute.py): only evidence of Discord is a
health sample, CDP's own errors are counted by kind. Thread creates are forwarded and
counted apart, uncapped. Everything else passes untouched. Responses stream; the bodies
of the routes that may create (chat, images, the channel API) are read whole, up to
`gate.max_body` (CDP takes base64 images), because they must be inspected for
`channelId`; other bodies stream. The gate fails open when the health machinery itself
is broken or Discord has not been reached since start.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from monitor.clock import Clock
from monitor.config import GateConfig
from monitor.gate.admission import CreateAdmission, Refusal
from monitor.gate.attribute import Attribution
from monitor.gate.classify import (
    body_inspected,
    request_kind,
    routed_path,
)
from monitor.gate.limit import LimitSettings
from monitor.gate.proxy import Outcome, Proxy, error_response
from monitor.gate.slots import ChannelEvents, CreateSlot
from monitor.health.owner import Health
from monitor.health.window import Sample
from monitor.httpserve import ERRORS, LIMITS, BodyTimeout, Limits, read_body
from monitor.metrics import Metrics

# Request ids of recent creates CDP failed without Discord evidence, kept for CDP's log
# to attribute later (:meth:`Gate.log_creation_failure`).
_UNATTRIBUTED_KEPT = 1024


class Ledger(Protocol):
    """What the gate tells the request ledger (monitor.ledger.RequestLedger)."""

    def opened(self, request_id: str, now: float) -> None: ...

    def completed(self, request_id: str, now: float) -> None: ...

    def failed(self, request_id: str, now: float) -> None: ...


class Gate:
    """The gate. `samples`: whether create outcomes feed the health window
    (`signals.gate`). `upstream_timeout`: how long CDP may take to answer (at least
    CDP's creation window plus its reply timeout; `cdp_create_window` is added to a
    request's own `out-time` header)."""

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
        upstream_timeout: float | None = None,
        cdp_create_window: float = 0.0,
        default_channel: bool = False,
        limit: LimitSettings | None = None,
        blocked: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._health = health
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._samples = samples
        self._ledger = ledger
        self._admission = CreateAdmission(
            config,
            health=health,
            metrics=metrics,
            clock=clock,
            logger=logger,
            create_window=cdp_create_window,
            limit=limit,
            blocked=blocked,
        )
        self._admission.pending.on_missing = self._channel_missing
        self.upstream_timeout = upstream_timeout or config.upstream_timeout
        self._create_window = cdp_create_window
        # CDP posts into its default channel (cdp.default_channel): chats create nothing.
        self._default_channel = default_channel or config.cdp_default_channel
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=self.upstream_timeout
        )
        self._proxy = Proxy(config.upstream, session=session, timeout=timeout, logger=logger)
        self._inflight: Counter[str] = Counter()
        # Creates forwarded to CDP whose request id (X-Request-Id) is not known yet: when
        # each was forwarded (wall clock). Until the ledger knows the id, only this says
        # a channel born since may be a live request's (unnamed_creates_since).
        self._unnamed: dict[object, float] = {}
        self._decisions: Counter[str] = Counter()
        self._cdp_errors: Counter[str] = Counter()
        self._attributed: Counter[str] = Counter()  # discord_ok | discord_failed | cdp_error
        self._unattributed: dict[str, str] = {}  # request id -> CDP error kind, newest last
        # Labelled metric children, looked up once each: `labels()` costs a lock and
        # validation on every call, a measurable share of a proxied request.
        self._requests_child: dict[tuple[str, str], PromCounter] = {}
        self._responses_child: dict[tuple[str, int], PromCounter] = {}
        self._inflight_child: dict[str, Gauge] = {}
        self._duration_child: dict[str, Histogram] = {}

    @property
    def fail_open(self) -> bool:
        return self._admission.fail_open

    def unnamed_creates_since(self) -> float | None:
        """When the oldest create still in flight without a known request id was
        forwarded to CDP (wall clock), or None when there is none."""
        return min(self._unnamed.values(), default=None)

    def status(self) -> dict[str, Any]:
        return {
            "upstream": self.config.upstream,
            "upstream_timeout": self.upstream_timeout,
            "inflight": dict(self._inflight),
            "waiting": self._admission.waiting,
            "fail_open": self._admission.fail_open,
            "fail_open_reason": self._admission.fail_open_reason,
            "decisions": dict(self._decisions),
            "max_concurrent_creates": self.config.max_concurrent_creates,
            # What frees a create slot; without the gateway session, the fallback.
            "slots": self._admission.pending.status(),
            "limit": self._admission.status(),
            # Creates by what their answers said about Discord; CDP's own errors by kind
            # (never Discord's: no health sample).
            "attribution": dict(self._attributed),
            "cdp_errors": dict(self._cdp_errors),
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

    def _answered(self, kind: str, response: web.StreamResponse) -> web.StreamResponse:
        key = (kind, response.status)
        child = self._responses_child.get(key)
        if child is None:
            child = self._metrics.gate_responses.labels(kind=kind, code=str(response.status))
            self._responses_child[key] = child
        child.inc()
        return response

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
            return self._answered(
                "other", self._refuse_request(400, "invalid_path", "ambiguous request path")
            )
        if not body_inspected(request.method, path):
            # Nothing to classify: the body streams to CDP, uncapped, as CDP takes it.
            body = request.content if request.body_exists else b""
            return await self._forward(request, body, started, kind="other", path=path)
        body_or_refusal = await self._read_inspected(request, path)
        if isinstance(body_or_refusal, web.Response):
            return self._answered("other", body_or_refusal)
        kind = request_kind(
            request.method,
            path,
            body_or_refusal,
            cdp_default_channel=self._default_channel,
        )
        if kind != "create":
            return await self._forward(request, body_or_refusal, started, kind=kind, path=path)
        return await self._handle_create(request, body_or_refusal, started, path)

    async def _read_inspected(self, request: web.Request, path: str) -> bytes | web.Response:
        """The whole body of a request that may create, up to `gate.max_body`, or the
        refusal to answer instead."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            # CDP reads these bodies undecoded; refuse rather than guess what it sees.
            return self._refuse_request(
                415, "unsupported_content_encoding", "compressed request bodies are not accepted"
            )
        length = request.content_length
        if length is not None and length > self.config.max_body:
            return self._too_large()
        try:
            # Reads to the end; the app's client_max_size (gate.max_body) caps it.
            return await read_body(request)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except BodyTimeout as exc:
            return self._refuse_request(408, "body_timeout", str(exc))
        except (aiohttp.ClientPayloadError, ConnectionError):
            return self._refuse_request(400, "bad_request", "could not read the request body")

    def _refuse(self, refusal: Refusal) -> web.StreamResponse:
        self._count("create", refusal.decision)
        response = error_response(503, refusal.code, refusal.message, refusal.retry_after)
        return self._answered("create", response)

    async def _handle_create(
        self, request: web.Request, body: bytes, started: float, path: str
    ) -> web.StreamResponse:
        refusal = await self._admission.admit()
        if refusal is not None:
            return self._refuse(refusal)
        if self._admission.fail_open:
            self._count("create", "fail_open")
        slot = await self._admission.acquire()
        if isinstance(slot, Refusal):
            return self._refuse(slot)
        try:
            return await self._forward(request, body, started, kind="create", path=path, slot=slot)
        finally:
            slot.release()

    def _timeout_for(self, request: web.Request) -> aiohttp.ClientTimeout | None:
        """A longer read timeout for a request whose `out-time` header gives CDP more
        time to reply than `cdp.request_timeout` (CDP: controller/chat.go:721-747)."""
        out_time = request.headers.get("out-time")
        if not out_time or not out_time.strip().isdigit():
            return None  # CDP answers a bad value itself (400)
        needed = self._create_window + int(out_time.strip())
        if needed <= self.upstream_timeout:
            return None
        return aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=needed)

    async def _forward(
        self,
        request: web.Request,
        body: bytes | aiohttp.StreamReader,
        started: float,
        *,
        kind: str,
        path: str,
        slot: CreateSlot | None = None,
    ) -> web.StreamResponse:
        create = kind == "create"
        self._inflight[kind] += 1
        self._inflight_gauge(kind).inc()
        outcome: Outcome | None = None
        token = object()
        if create:
            self._unnamed[token] = self._clock.time()

        def answered(request_id: str | None) -> None:
            if slot is not None:
                if request_id:
                    self._admission.pending.answered(request_id)
                slot.release("answer")  # CDP answers: its creation is over (DESIGN 7)
            if request_id and create and self._ledger is not None:
                self._ledger.opened(request_id, self._clock.time())
                self._unnamed.pop(token, None)  # the ledger protects its channel now

        try:
            outcome = await self._proxy.forward(
                request,
                body,
                create=path if create else None,
                on_answer=answered if create else None,
                timeout=self._timeout_for(request) if kind != "other" else None,
            )
            self._count(kind, outcome.decision)
            return self._answered(kind, outcome.response)
        finally:
            self._unnamed.pop(token, None)
            self._inflight[kind] -= 1
            self._inflight_gauge(kind).dec()
            duration = self._clock.monotonic() - started
            self._duration_histogram(kind).observe(duration)
            if create:
                self._record_create(outcome, duration)

    def _record_create(self, outcome: Outcome | None, duration: float) -> None:
        """Feed the health window (only on evidence of Discord), count CDP's own errors by
        kind, and finish the ledger entry for one create."""
        now = self._clock.time()
        attribution = None if outcome is None else outcome.attribution
        if attribution is not None:
            self._attribute(attribution, duration, now, outcome)
        if outcome is None or not outcome.finished or not outcome.request_id:
            return
        if self._ledger is not None:
            if outcome.ok:
                self._ledger.completed(outcome.request_id, now)
            else:
                self._ledger.failed(outcome.request_id, now)

    def _attribute(
        self, attribution: Attribution, duration: float, now: float, outcome: Outcome | None
    ) -> None:
        if attribution.kind is not None:
            self._attributed["cdp_error"] += 1
            self._cdp_errors[attribution.kind] += 1
            self._metrics.cdp_errors.labels(kind=attribution.kind).inc()
            if outcome is not None and outcome.request_id:
                self._keep_unattributed(outcome.request_id, attribution.kind)
        if attribution.sample is None:
            return
        self._attributed["discord_ok" if attribution.sample else "discord_failed"] += 1
        if self._samples:
            self._health.add_sample(Sample("gate", now, attribution.sample, duration))

    def _keep_unattributed(self, request_id: str, kind: str) -> None:
        self._unattributed[request_id] = kind
        if len(self._unattributed) > _UNATTRIBUTED_KEPT:
            del self._unattributed[next(iter(self._unattributed))]

    def attach_channel_events(self, events: ChannelEvents) -> Callable[[], None]:
        """Use the daemon's gateway session (its live guild): a slot is freed when the
        request's channel exists, and a creation window passing with no channel while
        the guild's events flow is a Discord failure. Returns the detach function."""
        return self._admission.pending.attach(events)

    def _channel_missing(self) -> None:
        # CDP spent its whole creation window and no channel appeared, while the session
        # saw the guild's events: evidence that Discord is not creating channels.
        self._attributed["discord_failed_no_channel"] += 1
        if self._samples:
            self._health.add_sample(Sample("gate", self._clock.time(), False))

    def log_creation_failure(self, request_id: str, now: float) -> bool:
        """Hook for CDP's log (monitor/health/cdplog.py events): a log line tying a
        channel-creation failure to `request_id`. When the gate passed that request and
        its answer carried no Discord evidence, it becomes a Discord failure sample now;
        True if so. Answers already attributed to Discord are not counted twice."""
        if self._unattributed.pop(request_id, None) is None:
            return False
        self._attributed["discord_failed_by_log"] += 1
        if self._samples:
            self._health.add_sample(Sample("gate", now, False))
        return True
