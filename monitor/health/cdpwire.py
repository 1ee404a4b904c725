"""CDP's own signals wired to what consumes them: its log's lines (file, newest file of a
glob, or a command) into the `CdpLogSignal` with its standing subscribers (health window,
request ledger), a CDP liveness gap as restart evidence, and what the gate has in flight
for the reconciler's rules. Built by the daemon (monitor.daemon)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from monitor.clock import Clock
from monitor.config import CdpLogConfig
from monitor.health.cdplog import (
    CdpLogEvent,
    CdpLogSignal,
    CdpStarted,
    CreateFailure,
    follow_command,
    follow_file,
    follow_newest,
)
from monitor.health.owner import Health
from monitor.health.probes import ProbeResult
from monitor.ledger import RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile.rules import Activity


class GateStatus(Protocol):
    """What the reconciler's rules read of the gate (monitor.gate.Gate)."""

    def status(self) -> dict[str, Any]: ...

    def unnamed_creates_since(self) -> float | None: ...


def cdplog_lines(
    config: CdpLogConfig, *, clock: Clock, logger: logging.Logger
) -> AsyncIterator[str]:
    """The CDP log's lines, from the file, the newest file of the glob or the command
    `signals.cdp_log` names."""
    if config.file is not None:
        return follow_file(config.file, clock=clock)
    if config.glob is not None:
        return follow_newest(str(config.glob), clock=clock, logger=logger)
    assert config.command is not None
    return follow_command(
        list(config.command), clock=clock, backoff_base=config.restart_backoff, logger=logger
    )


def cdplog_signal(
    metrics: Metrics,
    health: Health,
    ledger: RequestLedger,
    clock: Clock,
    logger: logging.Logger,
) -> CdpLogSignal:
    """The CDP log signal with its standing subscribers: the health window (creation
    failures that say something about Discord) and the request ledger (a CDP start makes
    every open request dead; a logged creation failure fails its request)."""
    signal = CdpLogSignal(metrics=metrics, logger=logger)

    def to_health(event: CdpLogEvent) -> None:
        sample = event.sample(clock.time())
        if sample is not None:
            health.add_sample(sample)

    def to_ledger(event: CdpLogEvent) -> None:
        now = clock.time()
        if isinstance(event, CdpStarted):
            dead = ledger.cdp_restarted(now)
            ledger.flush()  # on disk before the log position past it (cdpresume.py)
            logger.warning(
                "CDP %s started: its delete timers are gone; %d open requests died with the "
                "old process; their channels are reconciled once their time has passed",
                event.version or "",
                dead,
            )
        elif isinstance(event, CreateFailure) and event.request_id:
            ledger.failed(event.request_id, now)

    signal.subscribe(to_health)
    signal.subscribe(to_ledger)
    return signal


# CDP refusing connections this many probes in a row was down, not slow: a restart.
LIVENESS_GAP_PROBES = 3


def cdp_liveness_gap(
    ledger: RequestLedger, logger: logging.Logger
) -> Callable[[ProbeResult], None]:
    """A CDP liveness gap as restart evidence (for a CDP whose log is not read): the CDP
    probe's connection refused `LIVENESS_GAP_PROBES` times in a row, then an answer. The
    requests opened before the first refusal died with the old process. Timeouts and
    HTTP errors are a slow or failing CDP, not a gone one: never a gap."""
    since: list[float] = []  # when each refusal of the current run of them happened

    def observe(result: ProbeResult) -> None:
        if result.probe != "cdp":
            return
        if not result.ok and "Connect call failed" in result.detail:
            since.append(result.at)
            return
        if result.ok and len(since) >= LIVENESS_GAP_PROBES and ledger.cdp_restarted(since[0]):
            logger.warning("CDP was down (%d probes refused): its open requests died", len(since))
        since.clear()

    return observe


def gate_activity(gate: Callable[[], GateStatus | None]) -> Callable[[], Activity]:
    """What the gate has in flight, for the reconciler's rules (nothing known without
    a gate): how many creates, and since when one awaits its request id."""

    def activity() -> Activity:
        g = gate()
        if g is None:
            return Activity()
        since = g.unnamed_creates_since()
        return Activity(g.status()["inflight"].get("create", 0), unnamed_creates_since=since)

    return activity
