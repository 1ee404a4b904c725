"""The health breaker's parts below its state machine (see monitor.health.breaker): its
settings and open-period arithmetic, where a restart resumes from, and the pybreaker glue
(injected-time storage, the listener relay, the two callables an evaluation is fed
through)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pybreaker

if TYPE_CHECKING:
    from monitor.config import BreakerConfig
    from monitor.state import BreakerRecord

STATE_CLOSED = "closed"
STATE_OPEN = "open"
STATE_HALF_OPEN = "half_open"
STATE_FORCED_OPEN = "forced_open"

FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: STATE_CLOSED,
    pybreaker.STATE_OPEN: STATE_OPEN,
    pybreaker.STATE_HALF_OPEN: STATE_HALF_OPEN,
}
TO_PYBREAKER = {v: k for k, v in FROM_PYBREAKER.items()}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The breaker's parameters (durations in seconds); built by :func:`breaker_settings`."""

    reset_timeout: float
    success_threshold: int
    backoff_factor: float
    max_reset_timeout: float
    backoff_reset_after: float
    # Channel-creating requests the gate may let through per half-open period.
    half_open_max_trials: int

    def __post_init__(self) -> None:
        if self.reset_timeout <= 0:
            raise ValueError("reset_timeout must be positive")
        if self.max_reset_timeout < self.reset_timeout:
            raise ValueError("max_reset_timeout must be >= reset_timeout")
        if self.backoff_factor < 1:
            raise ValueError("backoff_factor must be >= 1")
        if self.success_threshold < 1 or self.half_open_max_trials < 1:
            raise ValueError("success_threshold and half_open_max_trials must be >= 1")
        if self.backoff_reset_after < 0:
            raise ValueError("backoff_reset_after must be >= 0")


def breaker_settings(breaker: BreakerConfig, *, half_open_trials: int) -> BreakerSettings:
    """The one way from the config (`breaker`, and `gate.half_open_trials`) to the settings."""
    return BreakerSettings(
        reset_timeout=breaker.reset_timeout,
        success_threshold=breaker.success_threshold,
        backoff_factor=breaker.backoff_factor,
        max_reset_timeout=breaker.max_reset_timeout,
        backoff_reset_after=breaker.backoff_reset_after,
        half_open_max_trials=half_open_trials,
    )


def open_duration(trips: int, settings: BreakerSettings) -> float:
    """How long the breaker stays open on its `trips`-th consecutive trip (1-based)."""
    exponent = max(trips, 1) - 1
    try:
        duration = settings.reset_timeout * settings.backoff_factor**exponent
    except OverflowError:
        duration = math.inf
    return min(duration, settings.max_reset_timeout)


@dataclass(frozen=True, slots=True)
class Restored:
    """Where the machine starts: its saved record (already validated on load), or a fresh
    closed breaker at `start`."""

    state: str
    since: float
    trips: int
    opened_at: float | None
    closed_since: float | None
    last_transition: dict[str, Any] | None


def restore(record: BreakerRecord | None, start: float) -> Restored:
    if record is None:
        return Restored(STATE_CLOSED, start, 0, None, start, None)
    opened = closed = None
    if record.state == STATE_CLOSED:
        closed = record.closed_since
    elif record.state == STATE_OPEN:
        # An open record without its timestamp is damaged; reopen from now.
        opened = start if record.opened_at is None else record.opened_at
    last = dict(record.last_transition) if record.last_transition else None
    return Restored(record.state, record.since, record.trips, opened, closed, last)


class Unstable(Exception):
    """Raised inside pybreaker's call() to record an unstable evaluation as a failure."""


def unstable() -> None:
    raise Unstable


def healthy() -> None:
    return None


class InjectedTimeStorage(pybreaker.CircuitMemoryStorage):
    """Memory storage whose ``opened_at`` is the evaluation's ``now``, not datetime.now()."""

    def __init__(self, state: str, now: float = 0.0, opened_ts: float | None = None) -> None:
        super().__init__(state)
        self.now = now  # set by HealthBreaker before every call into pybreaker
        self.opened_ts = opened_ts

    @property
    def opened_at(self) -> datetime | None:
        return None if self.opened_ts is None else datetime.fromtimestamp(self.opened_ts, UTC)

    @opened_at.setter
    def opened_at(self, _wall_clock: datetime) -> None:
        # pybreaker passes datetime.now(UTC); substitute the injected time.
        self.opened_ts = self.now


class Relay(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's state changes (as our state names) to the breaker owning it."""

    def __init__(self, changed: Callable[[str], None]) -> None:
        self._changed = changed

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._changed(FROM_PYBREAKER[new_state.name])
