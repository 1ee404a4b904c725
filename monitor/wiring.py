"""Config → components: the one place that knows how the REST client, the health owner,
the probe context, the reconciler, the gate and the control app are built from a
`Config`. Used by the daemon and by the one-shot commands (`cli probe`, `cli reconcile`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import CdpLogConfig, Config
from monitor.control import ControlTarget, build_control_app
from monitor.discord.rest import DiscordRestClient
from monitor.discord.session_live import LiveGuild
from monitor.errors import MonitorError
from monitor.gate import Gate
from monitor.health.cdplog import (
    CdpLogEvent,
    CdpLogSignal,
    CdpStarted,
    CreateFailure,
    follow_command,
    follow_file,
    follow_newest,
)
from monitor.health.effects import TransitionEffects
from monitor.health.owner import Health
from monitor.health.probes import ProbeContext, ProbeResult, enabled_probes, run_probe
from monitor.httpserve import Limits, start_site
from monitor.ledger import LedgerView, RequestLedger
from monitor.logs import set_secrets
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler, ReconcileReport
from monitor.reconcile.rules import Activity
from monitor.state import StateDir
from monitor.units import HostPort, url_for

_LOG = logging.getLogger("cdp-monitor")
# Built once at start (listeners, loops, log handler): a reload keeps the running values.
FIXED_ON_RELOAD = ("control", "state_dir", "gate", "signals", "log")
_RECONCILE_LOG = logging.getLogger("monitor.reconcile")


def config_secrets(config: Config) -> list[str]:
    """Values that must never reach a log line."""
    secrets = [config.discord.token.get_secret_value()]
    if config.control.token is not None:
        secrets.append(config.control.token.get_secret_value())
    return secrets


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


def gate_activity(gate: Callable[[], Gate | None]) -> Callable[[], Activity]:
    """What the gate has in flight, for the reconciler's rules (nothing known without
    a gate)."""

    def activity() -> Activity:
        g = gate()
        return Activity() if g is None else Activity(g.status()["inflight"].get("create", 0))

    return activity


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
    activity: Callable[[], Activity] | None = None,
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
        activity=activity,
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
    config: Config, target: ControlTarget, *, registry: CollectorRegistry
) -> web.Application:
    token = config.control.token
    c = config.control
    return build_control_app(
        target,
        registry=registry,
        token=token.get_secret_value() if token is not None else None,
        listen=c.listen_address,
        limits=Limits(c.header_timeout, c.body_timeout, c.idle_timeout, c.max_connections),
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
