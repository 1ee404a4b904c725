"""Whether a channel-creating request may go ahead: the breaker (through the health
owner, failing open when the health machinery is broken or Discord has never been
reached, holding in hold mode until the breaker changes), then a concurrency cap with a
bounded queue wait, then an optional creation-rate cap. All time comes from the injected
clock."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from monitor.clock import Clock
from monitor.config import GateConfig
from monitor.gate.slots import CreateSlot, PendingCreations
from monitor.health.owner import Admission, Health
from monitor.metrics import Metrics
from monitor.vocab import GATEWAY_TRIGGER_WORDS

MAX_RETRY_AFTER = 120
_FAIL_OPEN_LOG_EVERY = 30.0  # seconds between repeats of the fail-open error line


@dataclass(frozen=True, slots=True)
class Refusal:
    """A create that may not go ahead: the metric's decision and the 503's contents."""

    decision: str  # refused_unstable | refused_paused | queue_full
    message: str
    retry_after: int

    @property
    def code(self) -> str:
        # DESIGN section 7: `paused` tells a deliberate pause from an unstable Discord.
        return _CODES[self.decision]


_CODES = {
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
    :meth:`acquire`; a successful acquire must be paired with :meth:`release`."""

    def __init__(
        self,
        config: GateConfig,
        *,
        health: Health,
        metrics: Metrics,
        clock: Clock,
        logger: logging.Logger,
        create_window: float = 0.0,
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

    async def acquire(self) -> Refusal | None:
        """Take a create slot (waiting up to `queue_wait`) and a rate token; None on
        success (then :meth:`release` when done), else the refusal."""
        queue_wait = self.config.queue_wait
        deadline = self._clock.monotonic() + queue_wait
        self.waiting += 1
        try:
            got = await self._take_slot(queue_wait)
        finally:
            self.waiting -= 1
        if not got:
            message = (
                f"more than {self.config.max_concurrent_creates} channel-creating requests "
                "in flight; try again shortly"
            )
            return Refusal("queue_full", message, 1)
        wait = self._rate.wait_time()
        if wait > 0 and wait > deadline - self._clock.monotonic():
            self._rate.refund()
            self._slots.release()
            message = f"channel creation is capped at {self.config.create_rate}/s"
            return Refusal("queue_full", message, max(1, math.ceil(wait)))
        if wait > 0:
            await self._clock.sleep(wait)
        return None

    def release(self) -> None:
        self._slots.release()

    def slot(self) -> CreateSlot:
        """The hold of an acquired slot (monitor/gate/slots.py says what frees it)."""
        return self.pending.open()

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


def _refusal(admission: Admission) -> Refusal:
    retry_after = int(min(MAX_RETRY_AFTER, max(1, admission.retry_after)))
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
