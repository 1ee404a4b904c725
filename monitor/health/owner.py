"""The one owner of health: the sample window, the breaker, the last verdict and when it
was reached. Producers feed it (`add_sample`), the evaluation loop judges (`evaluate`),
the gate asks it (`machinery_ok`, `admit_create`, `wait_change`), the reconciler reads
`breaker_state`, the control API pauses, resumes and reads `status`.

The judgement itself is the pure :func:`judge`; everything here takes `now` or reads it
from the injected clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from monitor.clock import Clock, wait_event
from monitor.config import Config
from monitor.health.breaker import (
    STATE_FORCED_OPEN,
    STATE_HALF_OPEN,
    BreakerSettings,
    HealthBreaker,
    breaker_settings,
)
from monitor.health.window import (
    Sample,
    SampleWindow,
    Verdict,
    WindowSettings,
    evaluate,
    window_settings,
)
from monitor.state import StateDir
from monitor.vocab import DISCORD_SOURCES, OPEN_STATES

# Sources whose success means the monitor itself reached Discord (a probe, and the
# gateway session when it reports one). A gate or CDP-log sample is CDP's view, and the
# status page is not Discord's API.
REACH_SOURCES = DISCORD_SOURCES - {"gate", "cdplog", "statuspage"}
_UNKNOWN_LOG_EVERY = 60.0  # seconds between repeats of the "cannot reach Discord" line


def judge(
    samples: Iterable[Sample],
    now: float,
    settings: WindowSettings,
    *,
    half_open_since: float | None,
) -> Verdict:
    """The health verdict at `now`. While half-open (`half_open_since` set) a trial is
    judged only on what happened since it began: the outage's failures still in the
    window would otherwise reopen a recovered breaker."""
    if half_open_since is not None:
        samples = [s for s in samples if s.at >= half_open_since]
    return evaluate(samples, now, settings)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may a channel-creating request go ahead now?"."""

    admitted: bool
    state: str
    retry_after: float  # seconds, for Retry-After when refused
    pause_reason: str | None = None  # set when refused because of a manual pause


class Health:
    """See the module docstring. Build with :meth:`from_config`."""

    def __init__(
        self,
        window: WindowSettings,
        breaker: BreakerSettings,
        *,
        evaluate_interval: float,
        clock: Clock,
        state_dir: StateDir | None = None,
        logger: logging.Logger | None = None,
        require_reach: bool = False,
    ) -> None:
        self._settings = window
        self._evaluate_interval = evaluate_interval
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self.window = SampleWindow()
        self.breaker = HealthBreaker(
            breaker, state_dir=state_dir, logger=self._log, now=clock.time()
        )
        self.breaker.listeners.append(self._changed)
        self.verdict_listeners: list[Callable[[Verdict], None]] = []
        self.verdict: Verdict | None = None
        self.last_evaluation: float | None = None
        self._change = asyncio.Event()
        # None: the evaluation loop never started; False: it started and stopped.
        self._evaluating: bool | None = None
        # Discord unknown is not Discord unstable (DESIGN section 2 item 4): until the
        # monitor has reached Discord once, verdicts are `unknown` and the gate forwards.
        # Without any probe of its own (`require_reach` False) there is nothing to wait for.
        self.discord_reached_at: float | None = None if require_reach else clock.time()
        self.unreachable_reason = "no Discord probe has finished yet"
        self._last_unknown_log: float | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        clock: Clock,
        state_dir: StateDir | None = None,
        logger: logging.Logger | None = None,
    ) -> Health:
        return cls(
            window_settings(config.health, config.probes),
            breaker_settings(config.breaker, half_open_trials=config.gate.half_open_trials),
            evaluate_interval=config.health.evaluate_interval,
            clock=clock,
            state_dir=state_dir,
            logger=logger,
            require_reach=config.probes.gateway.enabled or config.probes.rest.enabled,
        )

    def reconfigure(self, config: Config) -> None:
        """Take reloaded `health`, `breaker` and probe `slow` settings; from the next
        evaluation on. `gate.half_open_trials` is fixed at start like the rest of `gate`."""
        self._settings = window_settings(config.health, config.probes)
        self._evaluate_interval = config.health.evaluate_interval
        new = breaker_settings(
            config.breaker, half_open_trials=self.breaker.settings.half_open_max_trials
        )
        if new != self.breaker.settings:
            self.breaker.reconfigure(new)

    @property
    def settings(self) -> WindowSettings:
        return self._settings

    @property
    def evaluate_interval(self) -> float:
        return self._evaluate_interval

    # -- producers and the evaluation -------------------------------------------------

    def add_sample(self, sample: Sample) -> None:
        """Probes, the CDP log and the gate feed the window through here."""
        self.window.append(sample)
        if sample.ok and self.discord_reached_at is None and sample.source in REACH_SOURCES:
            self.discord_reached_at = sample.at
            self._log.info("Discord reached (%s); judging its health from now on", sample.source)

    @property
    def discord_reached(self) -> bool:
        return self.discord_reached_at is not None

    def note_unreachable(self, reason: str) -> None:
        """Why Discord could not be reached (a failed probe's detail), for the log and
        /status while it has never been reached."""
        self.unreachable_reason = reason

    def evaluate(self, now: float) -> Verdict:
        """Judge the window at `now` and feed the verdict to the breaker."""
        self.window.prune(now, self._settings.window)
        state = self.breaker.tick(now)  # an open period that just ended is half-open now
        since = self.breaker.since if state == STATE_HALF_OPEN else None
        verdict = judge(self.window, now, self._settings, half_open_since=since)
        if not self.discord_reached:
            verdict = self._unknown(verdict, now)
        self.breaker.record_verdict(verdict, now)
        self.verdict = verdict
        self.last_evaluation = now
        for listener in self.verdict_listeners:
            listener(verdict)
        return verdict

    def _unknown(self, verdict: Verdict, now: float) -> Verdict:
        """The `unknown` verdict: never unstable, so the breaker stays as it is, and said
        loudly (the daemon cannot judge Discord at all)."""
        last = self._last_unknown_log
        if last is None or now - last >= _UNKNOWN_LOG_EVERY:
            self._last_unknown_log = now
            self._log.error(
                "cannot reach Discord since start (%s): health unknown, forwarding channel "
                "creates unchecked; check network access to Discord and discord.proxy",
                self.unreachable_reason,
            )
        return replace(
            verdict,
            unstable=False,
            conclusive=False,
            reason=f"unknown: Discord not reached since start ({self.unreachable_reason})",
        )

    async def run(self) -> None:
        """The evaluation loop (supervised by the daemon)."""
        self._evaluating = True
        try:
            while True:
                self.evaluate(self._clock.time())
                await self._clock.sleep(self._evaluate_interval)
        finally:
            self._evaluating = False

    def machinery_ok(self, now: float) -> bool:
        """False when evaluations stopped (a crashed or stuck loop): the gate fails open."""
        if self._evaluating is None:
            return True  # not started: nothing to judge by yet
        if not self._evaluating:
            return False
        if self.last_evaluation is None:
            return True  # the first evaluation is still to come
        stale_after = max(5.0, 3 * self._evaluate_interval)
        return now - self.last_evaluation <= stale_after

    # -- the gate and the reconciler --------------------------------------------------

    def admit_create(self, now: float) -> Admission:
        """Admit one channel-creating request now (taking a half-open trial slot), or
        say why not and for how long."""
        b = self.breaker
        if b.try_admit_create(now):
            return Admission(True, b.state, 0.0)
        reason = None
        if b.state == STATE_FORCED_OPEN:
            reason = (b.paused or {}).get("reason") or "paused by the operator"
        return Admission(False, b.state, b.retry_after(now), reason)

    async def wait_change(self, timeout: float) -> None:
        """Return when the breaker changes state, when an open period ends, or after
        `timeout` seconds, whichever is first (all on the injected clock)."""
        now = self._clock.time()
        self.breaker.tick(now)
        retry_at = self.breaker.retry_at
        if self.breaker.state in OPEN_STATES and retry_at is not None:
            timeout = min(timeout, max(0.0, retry_at - now))
        await wait_event(self._change, timeout, self._clock)

    def breaker_state(self, now: float) -> tuple[str, float]:
        """The breaker's state at `now` and since when it has been in it."""
        self.breaker.tick(now)
        return self.breaker.state, self.breaker.since

    def _changed(self, old: str, new: str, reason: str, now: float) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._change.set()
        self._change = asyncio.Event()

    # -- operator ---------------------------------------------------------------------

    def pause(self, now: float, duration: float | None, reason: str | None) -> None:
        """Pause; PauseNotPersistedError if in force but not saved (the control API
        answers an error, so nothing claims a pause a restart would lose)."""
        until = None if duration is None else now + duration
        self.breaker.pause(now, reason=reason or "manual pause", until=until)

    def resume(self, now: float) -> bool:
        """Lift a pause and close a breaker open on its own too; False if it was closed.
        PauseNotPersistedError if resumed but the saved pause could not be removed."""
        try:
            if not self.breaker.resume(now):
                return False
        finally:
            # A resume closes the breaker; judge the window at once so that resuming
            # during an outage reopens it now rather than at the next evaluation.
            if self.breaker.state == "closed":
                self.evaluate(now)
        return True

    def status(self, now: float) -> dict[str, Any]:
        """The `breaker`, `paused` and `health` parts of /status."""
        self.breaker.tick(now)
        snap = self.breaker.snapshot()
        return {
            "breaker": {
                "state": self.breaker.state,
                "since": self.breaker.since,
                "retry_at": self.breaker.retry_at,
                "trips": snap.get("trips"),
                "last_transition": snap.get("last_transition"),
            },
            "paused": self.breaker.paused,
            "health": None if self.verdict is None else self.verdict.as_dict(),
            "discord_reachable": {
                "reachable": self.discord_reached,
                "since": self.discord_reached_at,
                "reason": None if self.discord_reached else self.unreachable_reason,
            },
        }
