"""The health breaker: pybreaker's state machine, driven by one call per health evaluation.

pybreaker supplies the closed/open/half-open machine, its counters (in a
``CircuitMemoryStorage``) and the listener protocol. Two things it does not do are added
here, both without touching its internals:

- Injected time. pybreaker stamps ``opened_at`` with ``datetime.now()`` and checks the
  open timeout against the wall clock inside ``CircuitOpenState.before_call``. The
  storage below stamps the evaluation's ``now`` instead, and the breaker never calls
  into the open state: :meth:`HealthBreaker.tick` compares ``now`` with ``retry_at``
  itself and calls pybreaker's public ``half_open()``.
- Backoff and pause. The open period is ``open_duration(trips)``; a manual pause is an
  overlay (``forced_open``) that freezes the machine until it is lifted; lifting it, or
  ``resume`` alone, closes the machine (the operator's word overrides the backoff). A
  pause that cannot be saved holds but raises PauseNotPersistedError (``persisted: false``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pybreaker

from monitor.errors import PauseNotPersistedError, StateError
from monitor.health.machine import (
    FROM_PYBREAKER,
    STATE_CLOSED,
    STATE_FORCED_OPEN,
    STATE_HALF_OPEN,
    STATE_OPEN,
    TO_PYBREAKER,
    BreakerSettings,
    InjectedTimeStorage,
    Relay,
    Unstable,
    breaker_settings,
    healthy,
    open_duration,
    restore,
)
from monitor.health.machine import unstable as unstable_fn
from monitor.health.window import Verdict
from monitor.state import BreakerRecord, PauseRecord, StateDir
from monitor.units import format_duration

TransitionListener = Callable[[str, str, str, float], None]
"""``on_transition(old_state, new_state, reason, now)``."""


class HealthBreaker:
    """Decides whether channel creation is allowed, from a stream of health verdicts.

    Call :meth:`record` once per health evaluation, :meth:`tick` whenever time alone
    may matter. States: ``closed`` (creates allowed), ``open`` (refused until
    ``retry_at``), ``half_open`` (a few trial creates; ``success_threshold`` healthy
    evaluations close it, one unstable evaluation reopens it), ``forced_open`` (manual
    pause: refused until resumed or expired, whatever the health).
    """

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        state_dir: StateDir | None = None,
        listeners: Iterable[TransitionListener] = (),
        logger: logging.Logger | None = None,
        now: float | None = None,
    ) -> None:
        self._settings = settings
        self._state_dir = state_dir
        self._log = logger or logging.getLogger(__name__)
        self.listeners: list[TransitionListener] = list(listeners)
        start = time.time() if now is None else now

        saved = restore(state_dir.load_breaker(start) if state_dir else None, start)
        self._pause: PauseRecord | None = state_dir.load_pause(start) if state_dir else None
        self._pause_saved = True  # False: the pause in force is not on disk
        self._storage = InjectedTimeStorage(TO_PYBREAKER[saved.state], start, saved.opened_at)
        self._trips = saved.trips
        self._machine_since = saved.since
        self._closed_since: float | None = saved.closed_since
        self._last_transition: dict[str, Any] | None = saved.last_transition
        self._state = STATE_FORCED_OPEN if self._pause else saved.state
        self._since = self._pause.since if self._pause else self._machine_since
        self._trials = 0
        self._reason = ""
        self._pending: list[tuple[str, str, float]] = []
        self._cb = pybreaker.CircuitBreaker(
            fail_max=1,  # the window already smooths; one unstable evaluation trips
            reset_timeout=settings.reset_timeout,
            success_threshold=settings.success_threshold,
            state_storage=self._storage,
            listeners=[Relay(self._machine_changed)],
            name="discord-health",
            throw_new_error_on_trip=False,
        )

    # -- read side ------------------------------------------------------------------

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    @property
    def state(self) -> str:
        return self._state

    @property
    def since(self) -> float:
        """When the breaker entered its current state."""
        return self._since

    @property
    def trips(self) -> int:
        """Consecutive trips counted for backoff (reset after long enough closed)."""
        return self._trips

    @property
    def retry_at(self) -> float | None:
        """When creates may be tried again: None if closed; the start of the half-open
        period if half-open (trials are allowed now); the pause's expiry (None if
        indefinite) if paused."""
        if self._state == STATE_CLOSED:
            return None
        if self._state == STATE_FORCED_OPEN:
            return self._pause.until if self._pause else None
        if self._state == STATE_HALF_OPEN:
            return self._machine_since
        return self._open_until()

    @property
    def paused(self) -> dict[str, Any] | None:
        if self._pause is None:
            return None
        out: dict[str, Any] = {"reason": self._pause.reason, "until": self._pause.until}
        if not self._pause_saved:
            out["persisted"] = False  # a restart would lose it
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state for /status."""
        machine = self._machine_state()
        snap: dict[str, Any] = {
            "state": self._state,
            "since": self._since,
            "retry_at": self.retry_at,
            "paused": self.paused,
            "trips": self._trips,
            "opened_at": self._storage.opened_ts if machine == STATE_OPEN else None,
            "last_transition": self._last_transition,
        }
        if machine == STATE_OPEN:
            snap["open_duration"] = open_duration(self._trips, self._settings)
        if self._state == STATE_HALF_OPEN:
            snap["half_open"] = {
                "successes": self._cb.success_counter,
                "success_threshold": self._settings.success_threshold,
                "trials_admitted": self._trials,
                "max_trials": self._settings.half_open_max_trials,
            }
        return snap

    # -- gate side ------------------------------------------------------------------

    def allows_create(self, now: float) -> bool:
        """Whether a channel-creating request could be admitted now (consumes nothing).

        Applies time-based transitions first, like :meth:`tick`.
        """
        self.tick(now)
        if self._state == STATE_CLOSED:
            return True
        return self._state == STATE_HALF_OPEN and self._trials < self._settings.half_open_max_trials

    def try_admit_create(self, now: float) -> bool:
        """Admit one channel-creating request: always while closed; in half-open it
        takes one of the period's `half_open_max_trials` trial slots."""
        if not self.allows_create(now):
            return False
        if self._state == STATE_HALF_OPEN:
            self._trials += 1
        return True

    def retry_after(self, now: float) -> float:
        """Seconds a refused client should wait (for ``Retry-After``); at least 1."""
        until = self.retry_at if self._state in (STATE_OPEN, STATE_FORCED_OPEN) else None
        # Indefinite pause or half-open with its trials used: no known end, so suggest
        # the base open period.
        wait = self._settings.reset_timeout if until is None else until - now
        return float(max(1, math.ceil(wait)))

    # -- health side ----------------------------------------------------------------

    def record(
        self, unstable: bool, now: float, *, reason: str = "", conclusive: bool = True
    ) -> str:
        """Feed one health evaluation; returns the state afterwards.

        Unstable → failure (trips when closed, reopens when half-open). Stable → success
        (counts toward closing when half-open), unless `conclusive` is False: an
        evaluation with too few samples must not close the breaker. Ignored while open
        (until ``retry_at``) and while paused.
        """
        self.tick(now)
        machine = self._machine_state()
        if self._pause is not None or machine == STATE_OPEN:
            return self._state
        if not unstable and not conclusive and machine == STATE_HALF_OPEN:
            return self._state
        if unstable:
            why = reason or "unstable evaluation"
        else:
            why = f"{self._settings.success_threshold} healthy evaluations in half-open"
        with self._driving(now, why):
            try:
                self._cb.call(unstable_fn if unstable else healthy)
            except Unstable:
                pass
        return self._state

    def record_verdict(self, verdict: Verdict, now: float) -> str:
        return self.record(
            verdict.unstable, now, reason=verdict.reason, conclusive=verdict.conclusive
        )

    def tick(self, now: float) -> str:
        """Apply what time alone changes: pause expiry, open → half-open, backoff reset."""
        if self._pause is not None:
            if self._pause.until is None or now < self._pause.until:
                return self._state
            self._lift(now, f"pause expired ({self._pause.reason or 'no reason'})")
        machine = self._machine_state()
        if machine == STATE_OPEN:
            until = self._open_until()
            if until is not None and now >= until:
                with self._driving(now, f"open for {format_duration(now - self._machine_since)}"):
                    self._cb.half_open()
        elif machine == STATE_CLOSED and self._trips and self._backoff_expired(now):
            self._log.info(
                "breaker healthy for %s: open period back to %s",
                format_duration(self._settings.backoff_reset_after),
                format_duration(self._settings.reset_timeout),
            )
            self._trips = 0
            self._persist()
        return self._state

    # -- pause ----------------------------------------------------------------------

    def pause(self, now: float, *, reason: str = "", until: float | None = None) -> None:
        """Force the breaker open until `until` (None: until :meth:`resume`); pausing again
        replaces the reason and expiry. PauseNotPersistedError: in force, but not saved."""
        if until is not None and until <= now:
            raise ValueError("pause expiry must be in the future")
        since = self._pause.since if self._pause else now
        self._pause = PauseRecord(reason=reason, until=until, since=since)
        failed = self._save(lambda d: d.save_pause(self._pause))
        self._pause_saved = failed is None
        expiry = "indefinitely" if until is None else f"for {format_duration(until - now)}"
        self._transition(STATE_FORCED_OPEN, f"paused {expiry}: {reason or 'no reason'}", now)
        if failed is not None:
            raise PauseNotPersistedError(paused=True, cause=failed)

    def resume(self, now: float) -> bool:
        """Lift a pause and close the machine (open or half-open on its own too); False if
        closed already. PauseNotPersistedError: resumed, but pause.json still there."""
        if self._pause is None and self._machine_state() == STATE_CLOSED:
            return False
        failed = self._lift(now, "resumed by operator")
        if failed is not None:
            raise PauseNotPersistedError(paused=False, cause=failed)
        return True

    def reconfigure(self, settings: BreakerSettings) -> None:
        """Swap in reloaded settings; an open period in progress uses them from now on."""
        self._settings = settings
        self._cb.reset_timeout = settings.reset_timeout
        self._cb.success_threshold = settings.success_threshold

    # -- internals ------------------------------------------------------------------

    def _machine_state(self) -> str:
        return FROM_PYBREAKER[self._cb.current_state]

    def _open_until(self) -> float | None:
        opened = self._storage.opened_ts
        return None if opened is None else opened + open_duration(self._trips, self._settings)

    def _backoff_expired(self, now: float) -> bool:
        since = self._closed_since
        return since is not None and now - since >= self._settings.backoff_reset_after

    @contextlib.contextmanager
    def _driving(self, now: float, reason: str) -> Iterator[None]:
        """Context for one call into pybreaker: the injected time, the reason for any
        transition it makes, and the listeners run once pybreaker has finished (inside
        its listener its storage still holds the old state)."""
        self._storage.now = now
        self._reason = reason
        try:
            yield
        finally:
            pending, self._pending = self._pending, []
            for new, why, at in pending:
                self._transition(new, why, at)

    def _machine_changed(self, new: str) -> None:
        """pybreaker changed state (called by _Relay inside a pybreaker call)."""
        now = self._storage.now
        reason = self._reason
        if new == STATE_OPEN:
            # _closed_since is set only while closed, so a half-open failure never resets.
            self._trips = 1 if self._backoff_expired(now) else self._trips + 1
            duration = open_duration(self._trips, self._settings)
            reason = f"{reason or 'unstable'}; open for {format_duration(duration)}"
            reason += f" (trip {self._trips})"
            self._closed_since = None
        elif new == STATE_HALF_OPEN:
            self._trials = 0
            self._closed_since = None
            reason = f"{reason}; trying half-open" if reason else "trying half-open"
        else:
            self._closed_since = now
        self._machine_since = now
        if self._pause is None:
            self._pending.append((new, reason, now))

    def _lift(self, now: float, reason: str) -> StateError | None:
        """Lift the pause, if any, and close the machine; the error removing pause.json."""
        failed = None
        if self._pause is not None:
            self._pause = None
            self._pause_saved = True
            failed = self._save(lambda d: d.save_pause(None))
        if self._machine_state() != STATE_CLOSED:
            with self._driving(now, reason):
                self._cb.close()
        else:
            # The time spent paused is not healthy closed time for the backoff reset.
            self._closed_since = now
            self._machine_since = now
            self._transition(STATE_CLOSED, reason, now)
        return failed

    def _transition(self, new: str, reason: str, now: float) -> None:
        old = self._state
        if old == new:
            return
        self._state = new
        self._since = now
        self._last_transition = {"from": old, "to": new, "reason": reason, "at": now}
        self._persist()
        for listener in list(self.listeners):
            try:
                listener(old, new, reason, now)
            except Exception:
                # A broken metrics/log/action hook must not stop the breaker.
                self._log.exception("breaker listener %r failed on %s -> %s", listener, old, new)

    def _persist(self) -> None:
        machine = self._machine_state()
        record = BreakerRecord(
            state=machine,
            since=self._machine_since,
            trips=self._trips,
            opened_at=self._storage.opened_ts if machine == STATE_OPEN else None,
            closed_since=self._closed_since,
            last_transition=self._last_transition,
        )
        self._save(lambda d: d.save_breaker(record))

    def _save(self, write: Callable[[StateDir], None]) -> StateError | None:
        """Write; on failure log it and return the error (None when saved)."""
        if self._state_dir is None:
            return None
        try:
            write(self._state_dir)
        except StateError as e:
            # Losing persistence degrades restarts; crashing would stop the gate deciding.
            self._log.error("cannot persist breaker state: %s", e)
            return e
        return None


__all__ = [
    "STATE_CLOSED",
    "STATE_FORCED_OPEN",
    "STATE_HALF_OPEN",
    "STATE_OPEN",
    "BreakerSettings",
    "HealthBreaker",
    "TransitionListener",
    "breaker_settings",
    "open_duration",
]
