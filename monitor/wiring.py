"""Config → components: the one place that knows how the REST client, the health owner,
the probe context, the reconciler, the gate and the control app are built from a
`Config`. Used by the daemon and by the one-shot commands (`cli probe`, `cli reconcile`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import CdpLogConfig, Config
from monitor.control import ControlTarget, build_control_app
from monitor.discord.rest import DiscordRestClient
from monitor.discord.session_live import LiveGuild
from monitor.errors import MonitorError
from monitor.events import Events
from monitor.gate import Gate
from monitor.health.cdplog import follow_command, follow_file
from monitor.health.effects import TransitionEffects
from monitor.health.owner import Health
from monitor.health.probes import ProbeContext, ProbeResult, enabled_probes, run_probe
from monitor.httpserve import Limits, start_site
from monitor.ledger import LedgerView, RequestLedger
from monitor.logs import set_secrets
from monitor.metrics import Metrics
from monitor.notify import (
    Notifier,
    StatusWatch,
    build_notifier,
    notify_secrets,
    notify_settings,
    notify_targets,
)
from monitor.reconcile import Reconciler, ReconcileReport
from monitor.state import StateDir
from monitor.statuspage import History
from monitor.supervise import Supervisor
from monitor.units import HostPort, url_for

_LOG = logging.getLogger("cdp-monitor")
# Built once at start (listeners, loops, log handler): a reload keeps the running values.
FIXED_ON_RELOAD = ("control", "state_dir", "gate", "signals", "log")
_RECONCILE_LOG = logging.getLogger("monitor.reconcile")


def config_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Values that must never reach a log line."""
    secrets = [config.discord.token.get_secret_value()]
    if config.control.token is not None:
        secrets.append(config.control.token.get_secret_value())
    env = os.environ if environ is None else environ
    return secrets + notify_secrets(config.actions.notify, env)


WATCH_INTERVAL = 5.0  # seconds between reads of /status for events and the chart


@dataclass
class Notices:
    """Events and what listens to them: the notifier (if anywhere to send), the /status
    watch that turns state changes into events, and the status page's chart history."""

    events: Events
    notifier: Notifier | None
    watch: StatusWatch
    history: History
    targets: list[str]  # the URLs the notifier was built with

    def start(
        self, supervisor: Supervisor, status: Callable[[], dict[str, Any]], clock: Clock
    ) -> None:
        """The notifier's worker, and the supervised loop that watches /status."""
        if self.notifier is not None:
            self.notifier.start()
        supervisor.start("status-watch", functools.partial(self.run, status, clock))

    def status(self, rest: DiscordRestClient | None) -> dict[str, Any]:
        """The `discord` and `events` parts of /status."""
        return {
            "discord": {
                "token_invalid": rest.token_invalid if rest is not None else False,
                "banned_for": rest.banned_for if rest is not None else 0.0,
            },
            "events": [e.as_dict() for e in self.events.recent],
        }

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()

    def reconfigure(
        self, config: Config, environ: Mapping[str, str], logger: logging.Logger
    ) -> None:
        """Period, language, kinds and threshold follow a reload; URLs need a restart."""
        if notify_targets(config.actions.notify, environ) != self.targets:
            logger.warning("reload: actions.notify.urls changed; it takes effect after a restart")
        if self.notifier is not None:
            self.notifier.settings = notify_settings(config.actions.notify, environ)
        self.watch.reconcile_threshold = config.actions.notify.reconcile_threshold
        self.watch.creations_ratio = config.actions.notify.creations_ratio

    async def run(self, status: Callable[[], dict[str, Any]], clock: Clock) -> None:
        """The watch loop: read /status, emit what changed, feed the chart."""
        while True:
            snapshot = status()
            self.watch.observe(snapshot)
            self.history.record(snapshot, clock.time())
            await clock.sleep(WATCH_INTERVAL)


def new_notices(
    config: Config,
    effects: TransitionEffects,
    metrics: Metrics,
    clock: Clock,
    logger: logging.Logger,
    environ: Mapping[str, str],
) -> Notices:
    """The event bus wired to the breaker's effects and to the notifier."""
    events = Events(clock=clock, logger=logger)
    effects.events = events
    notify = config.actions.notify
    notifier = build_notifier(notify, environ=environ, metrics=metrics, logger=logger)
    if notifier is not None:
        events.subscribe(notifier)
    watch = StatusWatch(
        events,
        reconcile_threshold=notify.reconcile_threshold,
        creations_ratio=notify.creations_ratio,
    )
    return Notices(events, notifier, watch, History(), notify_targets(notify, environ))


def keep_fixed(old: Config, new: Config, logger: logging.Logger) -> Config:
    """`new` with the keys that need a restart kept at their running values (said in the
    log, rather than claiming a change that did not happen)."""
    for key in FIXED_ON_RELOAD:
        if getattr(old, key) != getattr(new, key):
            logger.warning("reload: %s changed; it takes effect after a restart", key)
    if enabled_probes(old) != enabled_probes(new):
        logger.warning("reload: the set of enabled probes takes effect after a restart")
    return new.model_copy(update={key: getattr(old, key) for key in FIXED_ON_RELOAD})


def new_rest(
    config: Config,
    *,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
    max_retries: int | None = None,
) -> DiscordRestClient:
    return DiscordRestClient.from_config(
        config.discord,
        session=session,
        metrics=metrics,
        clock=clock,
        logger=logger,
        max_retries=max_retries,
    )


async def serve(app: web.Application, key: str, address: HostPort) -> tuple[web.AppRunner, str]:
    """Start `app` on `address` (config key `key`, for the error); returns the runner and
    the URL it answers on."""
    try:
        runner, port = await start_site(app, address.host, address.port)
    except OSError as exc:
        raise MonitorError(
            f"{key} {address.host}:{address.port}: cannot listen: {exc.strerror}"
        ) from None
    return runner, url_for(address.host, port)


def cdplog_lines(
    config: CdpLogConfig, *, clock: Clock, logger: logging.Logger
) -> AsyncIterator[str]:
    """The CDP log's lines, from the file or the command `signals.cdp_log` names."""
    if config.file is not None:
        return follow_file(config.file, clock=clock)
    assert config.command is not None
    return follow_command(
        list(config.command), clock=clock, backoff_base=config.restart_backoff, logger=logger
    )


def new_health(
    config: Config,
    *,
    metrics: Metrics,
    clock: Clock,
    state_dir: StateDir,
    logger: logging.Logger,
    environ: Mapping[str, str],
) -> tuple[Health, TransitionEffects]:
    """The health owner with its transition effects attached (metrics, log, sd_notify;
    actions once the effects get a runner)."""
    health = Health.from_config(config, clock=clock, state_dir=state_dir, logger=logger)
    effects = TransitionEffects(
        metrics=metrics, logger=logger, environ=environ, actions=config.actions
    )
    effects.attach(health)
    return health, effects


def probe_context(
    config: Config,
    *,
    session: aiohttp.ClientSession,
    rest: DiscordRestClient,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
) -> ProbeContext:
    return ProbeContext(config=config, session=session, rest=rest, clock=clock, logger=logger)


def new_reconciler(
    config: Config,
    *,
    rest: DiscordRestClient,
    ledger: LedgerView | None,
    state_dir: StateDir,
    metrics: Metrics,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
    live: LiveGuild | None = None,
) -> Reconciler:
    return Reconciler.from_config(
        config,
        rest=rest,
        ledger=ledger,
        state_dir=state_dir,
        metrics=metrics,
        clock=clock,
        logger=logger,
        live=live,
    )


def new_gate(
    config: Config,
    *,
    health: Health,
    metrics: Metrics,
    clock: Clock,
    logger: logging.Logger,
    session: aiohttp.ClientSession,
    ledger: RequestLedger | None,
) -> Gate:
    return Gate(
        config.gate,
        health=health,
        metrics=metrics,
        clock=clock,
        logger=logger,
        session=session,
        samples=config.signals.gate,
        ledger=ledger,
    )


def control_app(
    config: Config,
    target: ControlTarget,
    *,
    registry: CollectorRegistry,
    history: History | None = None,
) -> web.Application:
    token = config.control.token
    c = config.control
    return build_control_app(
        target,
        registry=registry,
        token=token.get_secret_value() if token is not None else None,
        listen=c.listen_address,
        limits=Limits(c.header_timeout, c.body_timeout, c.idle_timeout, c.max_connections),
        history=history,
    )


async def probe_once(
    config: Config, *, session: aiohttp.ClientSession, clock: Clock = SYSTEM_CLOCK
) -> list[ProbeResult]:
    """Every enabled probe once, without a daemon (no retries: a probe measures)."""
    metrics = Metrics(CollectorRegistry())
    rest = new_rest(config, session=session, metrics=metrics, clock=clock, max_retries=0)
    ctx = probe_context(config, session=session, rest=rest, clock=clock)
    return [await run_probe(name, ctx) for name in enabled_probes(config)]


async def reconcile_once(
    config: Config,
    *,
    dry_run: bool,
    session: aiohttp.ClientSession,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _RECONCILE_LOG,
) -> ReconcileReport:
    """One run straight against Discord, without a daemon. Reads the daemon's request
    ledger (read-only) if the state directory has one; writes the audit log there."""
    set_secrets(config_secrets(config))  # redacted from the report it prints, too
    metrics = Metrics(CollectorRegistry())
    rest = new_rest(config, session=session, metrics=metrics, clock=clock, logger=logger)
    state_dir = StateDir(config.state_dir, logger=logger)
    ledger = RequestLedger.load_snapshot(state_dir, now=clock.time())
    reconciler = new_reconciler(
        config,
        rest=rest,
        ledger=ledger,
        state_dir=state_dir,
        metrics=metrics,
        clock=clock,
        logger=logger,
    )
    return await reconciler.run(dry_run=dry_run, trigger="cli")
