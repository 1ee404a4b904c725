"""What a breaker transition does outside the breaker: metrics, the log line, the
sd_notify STATUS, the operator's on_open/on_close actions and the breaker/pause events
(monitor.events). One listener, registered on the health owner's breaker; the only
place that writes the breaker metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from monitor.actions import ActionRunner
from monitor.config import ActionsConfig
from monitor.events import Events
from monitor.health.breaker import STATE_FORCED_OPEN, HealthBreaker
from monitor.health.owner import Health
from monitor.health.window import Verdict
from monitor.metrics import Metrics
from monitor.systemd import sd_notify
from monitor.vocab import BREAKER_STATES, OPEN_STATES


class TransitionEffects:
    """The breaker listener. `actions` is the live `actions` config section (a reload
    swaps it); `runner` is set once the daemon has an HTTP session for webhooks."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        logger: logging.Logger,
        environ: Mapping[str, str],
        actions: ActionsConfig,
    ) -> None:
        self._metrics = metrics
        self._log = logger
        self._environ = environ
        self.actions = actions
        self.runner: ActionRunner | None = None
        self.events: Events | None = None
        self._breaker: HealthBreaker | None = None

    def attach(self, health: Health) -> None:
        """Mirror `health` into the metrics from now on, starting with its current state."""
        breaker = self._breaker = health.breaker
        for s in BREAKER_STATES:
            self._metrics.breaker_transitions.labels(to=s)  # export zeros so rate() works
        self._metrics.set_breaker_state(breaker.state)
        self._metrics.paused.set(1 if breaker.state == STATE_FORCED_OPEN else 0)
        breaker.listeners.append(self)
        health.verdict_listeners.append(self.verdict)

    def verdict(self, verdict: Verdict) -> None:
        """The health gauges after one evaluation."""
        self._metrics.health_failure_ratio.set(verdict.failure_ratio)
        self._metrics.health_slow_ratio.set(verdict.slow_ratio)

    def __call__(self, old: str, new: str, reason: str, now: float) -> None:
        self._metrics.set_breaker_state(new)
        self._metrics.breaker_transitions.labels(to=new).inc()
        self._metrics.paused.set(1 if new == STATE_FORCED_OPEN else 0)
        level = logging.WARNING if new in OPEN_STATES else logging.INFO
        self._log.log(level, "breaker %s -> %s: %s", old, new, reason)
        sd_notify(f"STATUS=breaker {new}: {reason}"[:200], self._environ)
        self._emit(old, new, reason)
        if self.runner is None:
            return
        event = {"state": new, "previous": old, "reason": reason, "at": now}
        if new in OPEN_STATES and old not in OPEN_STATES:
            self.runner.fire(self.actions.on_open, event, self.actions.timeout)
        elif new == "closed":
            self.runner.fire(self.actions.on_close, event, self.actions.timeout)

    def _emit(self, old: str, new: str, reason: str) -> None:
        """One event per transition: a pause and its end speak for themselves."""
        if self.events is None:
            return
        if new == STATE_FORCED_OPEN:
            paused = (self._breaker.paused if self._breaker is not None else None) or {}
            self.events.emit(
                "paused", reason=paused.get("reason") or reason, until=paused.get("until")
            )
        elif old == STATE_FORCED_OPEN:
            self.events.emit("resumed", reason=reason, state=new)
        else:
            self.events.emit(f"breaker_{new}", reason=reason)
