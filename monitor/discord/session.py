"""The daemon's own gateway session: IDENTIFY on a budget, RESUME on every drop that
allows it, heartbeat at Discord's interval (first beat jittered), hand every dispatch
to the live guild state and every heartbeat ACK, op 9 and abnormal close to the health
owner as a `gateway` sample.

The protocol facts are in session_proto, the budget and backoff decisions (pure, taking
`now`) in session_budget, the guild state in session_live. One connection at a time;
`run` never returns (the daemon supervises it): after a 4004 it parks, as the REST
client stops after a 401.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import aiohttp

from monitor.clock import Clock
from monitor.config import GatewaySessionConfig
from monitor.discord import session_proto as proto
from monitor.discord.session_budget import (
    UNKNOWN_RETRY,
    BudgetDecision,
    StartLimit,
    backoff_delay,
    identifies_within_day,
    identify_decision,
    identify_wait,
)
from monitor.discord.session_conn import Connection, SessionEnd, close_ws
from monitor.discord.session_live import LiveGuild
from monitor.discord.session_proto import AfterClose
from monitor.errors import MonitorError
from monitor.health.window import Sample
from monitor.metrics import Metrics
from monitor.state import StateDir

_T = TypeVar("_T")
_PARKED = 3600.0  # a stopped session wakes this often only to stay a live loop
# Ends that are Discord's routine (op 7, our own zombie detection) are no failure sample.
# Session housekeeping, not Discord instability. op 9 is how Discord answers an IDENTIFY
# inside the max_concurrency window (CDP identifies with the same token whenever it starts,
# e.g. beside us on `docker compose up`) and a RESUME of an expired session
# (discord-api-docs events/gateway.mdx: "Invalid Session").
_NOT_FAILURES = frozenset({"reconnect", "heartbeat_timeout", "invalid_session"})
_MAX_BAD_RESUMES = 3
_BUDGET_REASONS = frozenset({"reserve", "daily_max"})


class GatewayBotAPI(Protocol):
    """What the session asks over REST (DiscordRestClient provides it)."""

    @property
    def token_invalid(self) -> bool: ...

    async def get_gateway_bot(self) -> Any: ...


class GatewaySession:
    """See the module docstring. `sink` takes health samples; `rand` gives [0, 1)."""

    def __init__(
        self,
        settings: GatewaySessionConfig,
        *,
        token: str,
        gateway_url: str | None,
        rest: GatewayBotAPI,
        http: aiohttp.ClientSession,
        live: LiveGuild,
        metrics: Metrics,
        clock: Clock,
        sink: Callable[[Sample], None],
        state_dir: StateDir | None = None,
        logger: logging.Logger | None = None,
        rand: Callable[[], float] = random.random,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        hello_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self._token = token
        self._base = gateway_url
        self._rest, self._http, self.live = rest, http, live
        self._metrics, self._clock, self._sink = metrics, clock, sink
        self._state_dir = state_dir
        self._log = logger or logging.getLogger(__name__)
        self._rand = rand
        self._backoff = (backoff_base, backoff_cap)
        self._hello_timeout = hello_timeout
        self._identifies = state_dir.load_identifies() if state_dir is not None else []
        self._resume: tuple[str, str] | None = None  # (session_id, resume_gateway_url)
        self._seq: int | None = None
        self._limit: StartLimit | None = None
        self._limit_failures = 0
        self._failures = 0
        self._bad_resumes = 0  # RESUMEs answered with a close, not RESUMED, in a row
        self._resuming = False
        self.blocked: BudgetDecision | None = None
        self.state, self.since = "starting", clock.time()
        self.last_close_code: int | None = None
        self.last_ack_latency: float | None = None
        self.counts = {"identifies": 0, "resumes": 0, "reconnects": 0}

    def reconfigure(self, settings: GatewaySessionConfig, *, rest: GatewayBotAPI) -> None:
        """A reload: the budget applies from the next decision; `enabled` and the token
        take effect after a restart."""
        self.settings = settings
        self._rest = rest

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, keep the session, reconnect; forever."""
        while True:
            if self.state == "stopped":
                await self._clock.sleep(_PARKED)
                continue
            if self._resume is None:
                wait = await self._may_identify()
                if wait is not None:
                    await self._clock.sleep(wait)
                    continue
            self._set_state("connecting")
            end = await self._connect_once()
            self._ended(end)
            base, cap = self._backoff
            await self._clock.sleep(
                backoff_delay(self._failures, base=base, cap=cap, jitter=self._rand())
            )

    async def _may_identify(self) -> float | None:
        """None when an IDENTIFY may go ahead now; else seconds to wait (budget)."""
        if self._rest.token_invalid:
            self._stop("the bot token is invalid (REST answered 401)")
            return _PARKED
        now = self._clock.time()
        self._limit = await self._start_limit(now)
        self._limit_failures = 0 if self._limit is not None else self._limit_failures + 1
        decision = identify_decision(
            now,
            limit=self._limit,
            reserve=self.settings.identify_reserve,
            identifies=self._identifies,
            max_per_day=self.settings.max_identifies_per_day,
            # A failed GET /gateway/bot (a 429, a blip) is asked again soon, then less often.
            unknown_retry=min(UNKNOWN_RETRY, 2.0**self._limit_failures),
        )
        if not decision.allowed or self._base is None:
            if decision.allowed:  # no gateway URL known: GET /gateway/bot must answer first
                decision = BudgetDecision(
                    False, "unknown", "gateway URL unknown", now + UNKNOWN_RETRY
                )
            self._block(decision)
            return max(1.0, (decision.retry_at or now + UNKNOWN_RETRY) - now)
        if self.blocked is not None:
            self._log.info("gateway session: IDENTIFY allowed again")
        self.blocked = None
        self._metrics.gateway_identify_blocked.set(0)
        assert self._limit is not None
        wait = identify_wait(now, self._identifies, self._limit.max_concurrency)
        if wait > 0:
            await self._clock.sleep(wait)
        return None

    async def _start_limit(self, now: float) -> StartLimit | None:
        try:
            body = await self._rest.get_gateway_bot()
        except MonitorError as exc:
            self._log.warning("gateway session: GET /gateway/bot failed: %s", exc)
            return None
        if self._base is None and isinstance(body, dict) and isinstance(body.get("url"), str):
            self._base = body["url"]
        limit = StartLimit.from_gateway_bot(body, now)
        if limit is not None:
            self._metrics.session_starts_remaining.set(limit.remaining)
        return limit

    def _block(self, decision: BudgetDecision) -> None:
        if self.blocked is None or self.blocked.reason != decision.reason:
            self._log.warning(
                "gateway session: not IDENTIFYing (%s); falling back to REST listings and probes",
                decision.detail,
            )
        self.blocked = decision
        # The alert is about the budget; GET /gateway/bot failing is the REST probe's news.
        budget = decision.reason in _BUDGET_REASONS
        self._metrics.gateway_identify_blocked.set(1 if budget else 0)
        self._set_state("fallback")

    # -- one connection ---------------------------------------------------------------

    async def _connect_once(self) -> SessionEnd:
        resuming = self._resume is not None
        base = self._resume[1] if self._resume is not None else self._base
        assert base is not None
        url = proto.connect_url(base, compress=self.settings.compress)
        connect = self._http.ws_connect(url, autoping=True, heartbeat=None, max_msg_size=0)
        try:
            ws = await self._within(connect, self._hello_timeout)
        except (aiohttp.ClientError, OSError) as exc:
            return SessionEnd("connect_failed", AfterClose.RESUME, None, f"connect: {exc!r}")
        if ws is None:
            return SessionEnd("connect_failed", AfterClose.RESUME, None, "connect timed out")
        conn = Connection(ws, proto.ZlibStream() if self.settings.compress else None)
        beat: asyncio.Task[None] | None = None
        end: SessionEnd | None = None
        try:
            interval = await self._within(self._hello(conn), self._hello_timeout)
            if interval is None:
                raise SessionEnd("connect_failed", AfterClose.RESUME, None, "no HELLO in time")
            await self._introduce(conn, resuming)
            beat = asyncio.ensure_future(self._heartbeat(conn, interval))
            while True:
                await self._handle(conn, await conn.receive())
        except SessionEnd as exc:
            end = exc
            return exc
        finally:
            if beat is not None:
                beat.cancel()
            final = end is not None and end.after is AfterClose.IDENTIFY
            await close_ws(ws, proto.CLOSE_FINAL if final else proto.CLOSE_RESUMABLE)
            self._down()

    async def _hello(self, conn: Connection) -> float:
        payload = await conn.receive()
        data = payload.get("d")
        interval = data.get("heartbeat_interval") if isinstance(data, dict) else None
        if payload["op"] != proto.OP_HELLO or not isinstance(interval, int | float):
            raise SessionEnd(
                "connect_failed", AfterClose.RESUME, None, f"expected HELLO: {payload!r}"
            )
        return float(interval) / 1000.0

    async def _introduce(self, conn: Connection, resuming: bool) -> None:
        self._resuming = resuming and self._resume is not None
        if resuming and self._resume is not None:
            await conn.send(proto.resume(self._token, self._resume[0], self._seq))
            return
        await conn.send(proto.identify(self._token))
        now = self._clock.time()
        self._identifies = identifies_within_day([*self._identifies, now], now)
        self.counts["identifies"] += 1
        self._metrics.gateway_identifies.inc()
        self._log.info("gateway session: IDENTIFY (%d in 24 h)", len(self._identifies))
        if self._state_dir is not None:
            try:
                self._state_dir.save_identifies(self._identifies)
            except MonitorError as exc:
                self._log.error("gateway session: cannot record the IDENTIFY: %s", exc)

    async def _heartbeat(self, conn: Connection, interval: float) -> None:
        """Beat every `interval` s, the first after a random part of it; an unanswered
        beat at the next one means a zombie connection: close 4000 and RESUME."""
        await self._clock.sleep(interval * self._rand())
        while True:
            if conn.pending is not None:
                self._sample(False, None)
                conn.ended = SessionEnd(
                    "heartbeat_timeout", AfterClose.RESUME, None, "no heartbeat ACK"
                )
                await close_ws(conn.ws, proto.CLOSE_RESUMABLE)
                return
            conn.pending = self._clock.monotonic()
            try:
                await conn.send(proto.heartbeat(self._seq))
            except SessionEnd:
                return  # the socket is going away; the reader sees why
            await self._clock.sleep(interval)

    async def _handle(self, conn: Connection, payload: dict[str, Any]) -> None:
        op, data = payload["op"], payload.get("d")
        if op == proto.OP_DISPATCH:
            seq = payload.get("s")
            if isinstance(seq, int):
                self._seq = seq
            event = payload.get("t")
            if event in ("READY", "RESUMED"):
                self._up(data, resumed=event == "RESUMED")
            if isinstance(event, str):
                self.live.dispatch(event, data, self._clock.time())
        elif op == proto.OP_HEARTBEAT_ACK and conn.pending is not None:
            latency = self._clock.monotonic() - conn.pending
            conn.pending = None
            self.last_ack_latency = latency
            self._metrics.gateway_heartbeat_latency.set(latency)
            self._sample(True, latency)
        elif op == proto.OP_HEARTBEAT:
            await conn.send(proto.heartbeat(self._seq))
        elif op == proto.OP_RECONNECT:
            raise SessionEnd("reconnect", AfterClose.RESUME, None, "op 7 RECONNECT")
        elif op == proto.OP_INVALID_SESSION:
            after = AfterClose.RESUME if data is True else AfterClose.IDENTIFY
            raise SessionEnd("invalid_session", after, None, f"op 9 INVALID_SESSION d={data!r}")

    # -- state changes ----------------------------------------------------------------

    def _up(self, data: Any, *, resumed: bool) -> None:
        if resumed:
            self.counts["resumes"] += 1
            self._metrics.gateway_resumes.inc()
        elif isinstance(data, dict):
            sid, url = data.get("session_id"), data.get("resume_gateway_url")
            if isinstance(sid, str) and isinstance(url, str):
                self._resume = (sid, url)
        self._failures = self._bad_resumes = 0
        self._set_state("up")
        self._metrics.gateway_session_up.set(1)
        self.live.session_up(resumed=resumed)
        self._log.info("gateway session %s", "RESUMED" if resumed else "READY")

    def _down(self) -> None:
        self._metrics.gateway_session_up.set(0)
        self.live.session_down()

    def _ended(self, end: SessionEnd) -> None:
        self.counts["reconnects"] += 1
        self._metrics.gateway_reconnects.labels(reason=end.reason).inc()
        self.last_close_code = end.code
        if end.reason not in _NOT_FAILURES:
            self._sample(False, None)
        if self.state != "up":
            self._failures += 1
        log = self._log.info if end.reason in _NOT_FAILURES else self._log.warning
        log("gateway session ended (%s: %s); next: %s", end.reason, end.detail, end.after.value)
        if end.after is AfterClose.STOP:
            why = "token invalid (4004)" if end.code == proto.AUTH_FAILED else f"close {end.code}"
            if end.code == proto.AUTH_FAILED:
                self._metrics.discord_token_invalid.set(1)
            self._stop(why)
        else:
            self._forget_if_gone(end)
            self._set_state("reconnecting")

    def _forget_if_gone(self, end: SessionEnd) -> None:
        """Drop the session when Discord says it is gone, or when RESUME keeps being
        answered with a close (a gateway that will not say op 9): then IDENTIFY."""
        if self._resuming and self.state != "up" and end.reason == "closed":
            self._bad_resumes += 1
        self._resuming = False
        if end.after is AfterClose.IDENTIFY or self._bad_resumes >= _MAX_BAD_RESUMES:
            self._resume, self._seq, self._bad_resumes = None, None, 0

    def _stop(self, why: str) -> None:
        self._log.error("gateway session stopped: %s", why)
        self.blocked = BudgetDecision(False, "stopped", why)
        self._set_state("stopped")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, self._clock.time()

    def _sample(self, ok: bool, duration: float | None) -> None:
        self._sink(Sample("gateway", self._clock.time(), ok, duration))

    async def _within(self, coro: Coroutine[Any, Any, _T], seconds: float) -> _T | None:
        """`coro`'s result, or None if the injected clock passes `seconds` first."""
        work = asyncio.ensure_future(coro)
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not work.done():
            work.cancel()
            return None
        return work.result()

    def status(self, now: float) -> dict[str, Any]:
        """`gateway_session` of /status."""
        blocked = self.blocked
        return {
            "enabled": True,
            "state": self.state,
            "since": self.since,
            "resumable": self._resume is not None,
            "heartbeat_ack_seconds": self.last_ack_latency,
            "identifies_24h": len(identifies_within_day(self._identifies, now)),
            "max_identifies_per_day": self.settings.max_identifies_per_day,
            "identify_reserve": self.settings.identify_reserve,
            "session_starts_remaining": None if self._limit is None else self._limit.remaining,
            "last_close_code": self.last_close_code,
            **self.counts,
            "fallback": None
            if blocked is None
            else {"reason": blocked.reason, "detail": blocked.detail, "retry_at": blocked.retry_at},
        }
