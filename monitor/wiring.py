"""Config → components: the one place that knows how the REST client, the health owner,
the probe context, the reconciler, the gate and the control app are built from a
`Config`. Used by the daemon and by the one-shot commands (`cli probe`, `cli reconcile`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import Config
from monitor.control import ControlTarget, build_control_app
from monitor.discord.rest import DiscordRestClient
from monitor.discord.session_live import LiveGuild
from monitor.discord.transport import discord_session
from monitor.errors import MonitorError
from monitor.events import Events
from monitor.gate import Gate
from monitor.gate.limit import LimitSettings
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
from monitor.reconcile.rules import Activity
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
    session: aiohttp.ClientSession | None = None,
    *,
    metrics: Metrics,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
    max_retries: int | None = None,
) -> DiscordRestClient:
    """The REST client; without `session`, on a new session of Discord's own (through
    `discord.proxy`, monitor/discord/transport.py), which its owner closes."""
    return DiscordRestClient.from_config(
        config.discord,
        session=discord_session(config.discord) if session is None else session,
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

    def reachable(_verdict: object) -> None:
        metrics.discord_reachable.set(1 if health.discord_reached else 0)

    health.verdict_listeners.append(reachable)
    return health, effects


def probe_context(
    config: Config,
    *,
    session: aiohttp.ClientSession,
    rest: DiscordRestClient,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
) -> ProbeContext:
    """`session` for CDP and the status page; Discord's requests use `rest`'s session."""
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
    activity: Callable[[], Activity] | None = None,
    live: LiveGuild | None = None,
) -> Reconciler:
    return Reconciler(
        config.reconcile,
        guild_id=config.discord.guild_id,
        channel_limit=config.discord.channel_limit,
        rest=rest,
        ledger=ledger,
        state_dir=state_dir,
        metrics=metrics,
        clock=clock,
        logger=logger,
        cdp=config.cdp,
        activity=activity,
        live=live,
    )


def upstream_timeout(config: Config) -> float:
    """How long the gate waits for CDP: never shorter than CDP's creation window plus its
    reply timeout (DESIGN section 7), whatever `gate.upstream_timeout` says."""
    return max(config.gate.upstream_timeout, config.cdp.request_lifetime)


def new_gate(
    config: Config,
    *,
    health: Health,
    metrics: Metrics,
    clock: Clock,
    logger: logging.Logger,
    session: aiohttp.ClientSession,
    ledger: RequestLedger | None,
    live: LiveGuild | None = None,
    blocked: Callable[[], float] | None = None,
) -> Gate:
    """The gate; with `live` and the gateway session on, create slots are freed by the
    session's channel events (monitor/gate/slots.py) and the adaptive limit measures
    Discord's creation time by them (monitor/gate/limit.py). `blocked`: seconds the
    shared bot token is known to be blocked."""
    gate = Gate(
        config.gate,
        health=health,
        metrics=metrics,
        clock=clock,
        logger=logger,
        session=session,
        samples=config.signals.gate,
        ledger=ledger,
        upstream_timeout=upstream_timeout(config),
        default_channel=config.cdp.default_channel or config.gate.cdp_default_channel,
        cdp_create_window=config.cdp.creation_window,
        limit=create_limit(config),
        blocked=blocked,
    )
    if live is not None and config.discord.gateway_session.enabled:
        gate.attach_channel_events(live)
    return gate


def create_limit(config: Config) -> LimitSettings | None:
    """The adaptive create limit's settings (None: `gate.adaptive_limit` off)."""
    if not config.gate.adaptive_limit:
        return None
    return LimitSettings(
        attempt_timeout=config.cdp.create_attempt_timeout,
        headroom=config.gate.limit_headroom,
        max_pending=config.gate.max_concurrent_creates,
        window=config.cdp.creation_window,
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
    config: Config,
    *,
    session: aiohttp.ClientSession,
    clock: Clock = SYSTEM_CLOCK,
    discord: aiohttp.ClientSession | None = None,
) -> list[ProbeResult]:
    """Every enabled probe once, without a daemon (no retries: a probe measures).
    `discord`: the session for Discord (default: `session`)."""
    metrics = Metrics(CollectorRegistry())
    discord_http = session if discord is None else discord
    rest = new_rest(config, session=discord_http, metrics=metrics, clock=clock, max_retries=0)
    ctx = probe_context(config, session=session, rest=rest, clock=clock)
    return [await run_probe(name, ctx) for name in enabled_probes(config)]


async def reconcile_once(
    config: Config,
    *,
    dry_run: bool,
    session: aiohttp.ClientSession,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _RECONCILE_LOG,
    adopt_older_than: float | None = None,
) -> ReconcileReport:
    """One run straight against Discord, without a daemon. Reads the daemon's request
    ledger (read-only) if the state directory has one; writes the audit log there.
    `adopt_older_than`: the operator's `--adopt-older-than` (old leaks with messages)."""
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
    trigger = "cli" if adopt_older_than is None else "cli_adopt"
    return await reconciler.run(dry_run=dry_run, trigger=trigger, adopt_older_than=adopt_older_than)
