"""Whether a channel-creating request may go ahead: the breaker (through the health
owner, failing open when the health machinery is broken or Discord has never been
reached, holding in hold mode until the breaker changes), then a concurrency cap with a
bounded queue wait, an optional creation-rate cap, and the adaptive create limit
(monitor/gate/limit.py) while the gateway session shows each create's channel; a create
that waited is checked against the breaker once more. All time comes from the injected
clock."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.clock import Clock, wait_event
from monitor.config import GateConfig
from monitor.gate.limit import CreateQueue, LimitSettings, Verdict
from monitor.gate.slots import CreateSlot, PendingCreations
from monitor.health.owner import Admission, Health
from monitor.metrics import Metrics
from monitor.vocab import GATEWAY_TRIGGER_WORDS, OPEN_STATES

MAX_RETRY_AFTER = 120
_FAIL_OPEN_LOG_EVERY = 30.0  # seconds between repeats of the fail-open error line
_LIMIT_LOG_EVERY = 30.0  # at most one "create limit" line per this many seconds


@dataclass(frozen=True, slots=True)
class Refusal:
    """A create that may not go ahead: the metric's decision and the 503's contents."""

    decision: str  # refused_unstable | refused_paused | queue_full | limited
    message: str
    retry_after: int

    @property
    def code(self) -> str:
        # DESIGN section 7: `paused` tells a deliberate pause from an unstable Discord.
        return _CODES[self.decision]


_CODES = {
    "limited": "create_queue_full",
    "queue_full": "create_queue_full",
    "refused_paused": "paused",
    "refused_unstable": "discord_unstable",
}


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


class CreateAdmission:
    """Admission of channel-creating requests. :meth:`admit` then, when admitted,
    :meth:`acquire`; the slot it returns must be released when CDP's creation is over
    (monitor/gate/slots.py says what frees it)."""

    def __init__(
        self,
        config: GateConfig,
        *,
        health: Health,
        metrics: Metrics,
        clock: Clock,
        logger: logging.Logger,
        create_window: float = 0.0,
        limit: LimitSettings | None = None,
        blocked: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._health = health
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._slots = asyncio.Semaphore(config.max_concurrent_creates)
        # create_window: CDP's 3 attempts, the longest a slot is held (0: no limit).
        self.pending = PendingCreations(
            clock=clock, window=create_window, release=self._slots.release
        )
        self._rate = RateCap(config.create_rate, clock)
        # The adaptive limit (None: gate.adaptive_limit off); `blocked`: seconds the
        # shared bot token is known to be blocked (a global 429 the daemon saw).
        self.queue = CreateQueue(limit) if limit is not None else None
        self._blocked = blocked or (lambda: 0.0)
        self._queue_changed = asyncio.Event()
        self._shown_limit = config.max_concurrent_creates
        self._limit_logged_at: float | None = None
        self.pending.on_channel = self._channel_created
        self.pending.on_released = self._slot_released
        self._last_fail_open_log: float | None = None
        self.waiting = 0
        self.fail_open = False
        self.fail_open_reason: str | None = None

    def _fail_open_reason(self, now: float) -> str | None:
        if not self._health.machinery_ok(now):
            return "no fresh health evaluation"
        if not self._health.discord_reached:
            return f"Discord not reached since start ({self._health.unreachable_reason})"
        return None

    async def admit(self) -> Refusal | None:
        """None to admit (check :attr:`fail_open` for how); else the refusal."""
        now = self._clock.time()
        reason = self._fail_open_reason(now)
        # A deliberate pause needs no health verdict, so it holds even when failing open.
        if reason is not None and self._health.breaker.state != "forced_open":
            self._failing_open(reason)
            return None
        self.fail_open = False
        self.fail_open_reason = None
        self._metrics.gate_fail_open.set(0)
        hold = self.config.hold_max if self.config.when_open == "hold" else 0.0
        deadline = self._clock.monotonic() + hold
        admission = self._health.admit_create(now)
        while not admission.admitted:
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return _refusal(admission)
            # Hold: wake on a breaker change (or the open period's end), not on a poll.
            await self._health.wait_change(left)
            admission = self._health.admit_create(self._clock.time())
        return None

    def _failing_open(self, reason: str) -> None:
        self.fail_open = True
        self.fail_open_reason = reason
        # `cdpmon_gate_fail_open` is the broken machinery; Discord never reached has its
        # own `cdpmon_discord_reachable 0` (set by the health owner's listener).
        self._metrics.gate_fail_open.set(0 if self._health.machinery_ok(self._clock.time()) else 1)
        now = self._clock.monotonic()
        last = self._last_fail_open_log
        if last is None or now - last > _FAIL_OPEN_LOG_EVERY:
            self._last_fail_open_log = now
            self._log.error("gate failing open: %s; forwarding creates unchecked", reason)

    async def acquire(self) -> CreateSlot | Refusal:
        """Take a create slot (waiting up to `queue_wait` for it, for a rate token and for
        the adaptive limit): the slot to release when the creation is over, or the
        refusal."""
        queue_wait = self.config.queue_wait
        start = self._clock.monotonic()
        deadline = start + queue_wait
        self.waiting += 1
        try:
            if not await self._take_slot(queue_wait):
                message = (
                    f"more than {self.config.max_concurrent_creates} channel-creating "
                    "requests in flight; try again shortly"
                )
                return Refusal("queue_full", message, 1)
            refusal = await self._rate_token(deadline)
            if refusal is None:
                refusal = await self._within_limit(deadline)
            if refusal is None and self._clock.monotonic() > start:
                refusal = self._opened_meanwhile()
            if refusal is not None:
                self._slots.release()
                return refusal
        finally:
            self.waiting -= 1
        return self._open_slot()

    async def _rate_token(self, deadline: float) -> Refusal | None:
        wait = self._rate.wait_time()
        if wait > 0 and wait > deadline - self._clock.monotonic():
            self._rate.refund()
            message = f"channel creation is capped at {self.config.create_rate}/s"
            return Refusal("queue_full", message, max(1, math.ceil(wait)))
        if wait > 0:
            await self._clock.sleep(wait)
        return None

    def _opened_meanwhile(self) -> Refusal | None:
        """A create that waited in the queue: the breaker may have opened (or the
        operator paused) meanwhile. Only an open state refuses here: a half-open trial
        was taken at admission and is not taken twice."""
        state, _ = self._health.breaker_state(self._clock.time())
        if state not in OPEN_STATES or (self.fail_open and state != "forced_open"):
            return None
        return _refusal(self._health.admit_create(self._clock.time()))

    # -- the adaptive limit (monitor/gate/limit.py) -----------------------------------

    def limit_active(self) -> bool:
        """The limit needs each create's channel event: on only while the gateway
        session's view of the guild is current."""
        events = self.pending.events
        return self.queue is not None and events is not None and events.current

    def verdict(self) -> Verdict | None:
        """The limit's verdict on one more create now (None: the limit is off or stands
        aside). No side effects: `/status` asks it too."""
        if self.queue is None or not self.limit_active():
            return None
        return self.queue.verdict(self._clock.monotonic(), max(0.0, self._blocked()))

    async def _within_limit(self, deadline: float) -> Refusal | None:
        while (verdict := self.verdict()) is not None:
            self._show(verdict)
            if verdict.admit:
                return None
            left = deadline - self._clock.monotonic()
            if left <= 0:
                assert self.queue is not None
                message = (
                    f"Discord is creating channels slowly ({verdict.per_create:.1f}s each, "
                    f"{self.queue.pending} pending): another one now would wait "
                    f"{verdict.predicted_wait:.0f}s, past CDP's attempt timeout"
                )
                return Refusal("limited", message, _retry_after(math.ceil(verdict.retry_after)))
            # Wake on a finished create, or when time alone may have made room.
            await wait_event(
                self._queue_changed, min(left, max(0.01, verdict.retry_after)), self._clock
            )
        return None

    def _queue_change(self) -> None:
        self._queue_changed.set()
        self._queue_changed = asyncio.Event()

    def _open_slot(self) -> CreateSlot:
        slot = self.pending.open()
        if self.queue is not None:
            slot.ticket = self.queue.admit(self._clock.monotonic())
            self._metrics.gate_creates.labels(stage="admitted").inc()
        return slot

    def _channel_created(self) -> None:
        if self.queue is not None and self.queue.completed_one(self._clock.monotonic()):
            self._metrics.gate_creates.labels(stage="completed").inc()
        self._queue_change()

    def _slot_released(self, slot: CreateSlot, reason: str) -> None:
        # CDP answered: that create is over. A hang-up ("done") is not: CDP goes on.
        if self.queue is not None and slot.ticket is not None and reason == "answer":
            self.queue.ended(slot.ticket, self._clock.monotonic())
        self._queue_change()

    def _show(self, verdict: Verdict) -> None:
        self._metrics.gate_create_limit.set(verdict.limit)
        self._metrics.gate_create_predicted_wait.set(verdict.predicted_wait)
        self._metrics.gate_create_seconds.set(verdict.per_create)
        old, new = self._shown_limit, verdict.limit
        now = self._clock.monotonic()
        quiet = self._limit_logged_at is None or now - self._limit_logged_at >= _LIMIT_LOG_EVERY
        if quiet and (new * 2 <= old or old * 2 <= new):
            self._shown_limit, self._limit_logged_at = new, now
            assert self.queue is not None
            self._log.warning(
                "create limit %d -> %d: Discord takes %.1fs per channel, CDP gives up on an "
                "attempt after %gs (%d%% kept in reserve); pending creates %d",
                old, new, verdict.per_create, self.queue.settings.attempt_timeout,
                round(self.queue.settings.headroom * 100), self.queue.pending,
            )  # fmt: skip

    def status(self) -> dict[str, Any]:
        """`/status` -> gate.limit."""
        if self.queue is None:
            return {"enabled": False}
        verdict = self.verdict()
        q = self.queue
        out: dict[str, Any] = {
            "enabled": True,
            "active": verdict is not None,
            "pending": q.pending,
            "admitted": q.admitted,
            "completed": q.completed,
            "budget": q.settings.budget,
        }
        if verdict is not None:
            out |= {
                "limit": verdict.limit,
                "per_create": round(verdict.per_create, 3),
                "predicted_wait": round(verdict.predicted_wait, 3),
            }
        else:
            out["inactive_reason"] = "no current gateway session: creates' channels unseen"
        return out

    async def _take_slot(self, timeout: float) -> bool:
        """Acquire a create slot within `timeout` seconds of the injected clock."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: no race (a 0s wait would refuse)
            return True
        slot = asyncio.ensure_future(self._slots.acquire())
        timer = asyncio.ensure_future(self._clock.sleep(timeout))
        try:
            await asyncio.wait({slot, timer}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            slot.cancel()
            if slot.done() and not slot.cancelled():
                self._slots.release()  # taken just as this request was cancelled
            raise
        finally:
            timer.cancel()
        if slot.done():
            return True
        slot.cancel()  # Semaphore.acquire passes a wake-up it can no longer use on
        return False


def _retry_after(seconds: float) -> int:
    """A refusal's Retry-After in whole seconds, 1 to MAX_RETRY_AFTER."""
    return int(min(MAX_RETRY_AFTER, max(1, seconds)))


def _refusal(admission: Admission) -> Refusal:
    retry_after = _retry_after(admission.retry_after)
    if admission.pause_reason is not None:
        reason = admission.pause_reason
        if any(word in reason.lower() for word in GATEWAY_TRIGGER_WORDS):
            reason = "see the operator"  # the free text must not disable us upstream
        message = (
            f"channel creation is paused by the operator ({reason}); retry after {retry_after}s"
        )
        return Refusal("refused_paused", message, retry_after)
    message = f"Discord is unstable; channel creation is paused, retry after {retry_after}s"
    return Refusal("refused_unstable", message, retry_after)
