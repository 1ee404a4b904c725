"""The daemon's lifecycle: start the components (built by monitor.wiring) in order,
handle signals, reload atomically (parse fully, then swap), stop in order. Health lives
in monitor.health.owner, loop supervision in monitor.supervise, systemd in monitor.systemd."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor import USER_AGENT
from monitor.actions import ActionRunner
from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import Config, load_config
from monitor.control import Unavailable
from monitor.discord.rest import DiscordRestClient
from monitor.discord.session_watch import GuildWatch
from monitor.errors import ConfigError
from monitor.gate import Gate, new_upstream_session
from monitor.health.breaker import HealthBreaker
from monitor.health.cdpwire import cdp_liveness_gap, cdplog_lines, cdplog_signal, gate_activity
from monitor.health.probes import (
    ProbeContext,
    ProbeResult,
    enabled_probes,
    probe_interval,
    record_probe,
    run_probe,
)
from monitor.health.window import Verdict
from monitor.ledger import RequestLedger
from monitor.logs import redact, set_secrets, setup_logging
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler
from monitor.state import StateDir
from monitor.supervise import Supervisor
from monitor.systemd import sd_notify, watchdog_interval
from monitor.wiring import (
    config_secrets,
    control_app,
    keep_fixed,
    new_gate,
    new_health,
    new_notices,
    new_reconciler,
    new_rest,
    probe_context,
    serve,
)

SHUTDOWN_BOUND = 4.0  # seconds; SIGTERM must finish well inside systemd's stop timeout


class Daemon:
    """Owns the mutable runtime built from a frozen `Config`."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry,
        logger: logging.Logger,
        clock: Clock = SYSTEM_CLOCK,
        config_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.registry = registry
        self.log = logger
        self.clock = clock
        self.environ = dict(os.environ if environ is None else environ)
        self.metrics = Metrics(registry, process_metrics=process_metrics)
        self.state_dir = StateDir(config.state_dir, logger=logger)
        self.ledger = RequestLedger(state_dir=self.state_dir, clock=clock, logger=logger)
        self.health, self.effects = new_health(
            config,
            metrics=self.metrics,
            clock=clock,
            state_dir=self.state_dir,
            logger=logger,
            environ=self.environ,
        )
        self.notices = new_notices(config, self.effects, self.metrics, clock, logger, self.environ)
        self.watch = GuildWatch(
            config,
            health=self.health,
            metrics=self.metrics,
            state_dir=self.state_dir,
            clock=clock,
            logger=logger,
        )
        self.reconciler: Reconciler | None = None
        # CDP's log events; subscribe here (the gate's attribution by request id).
        self.cdplog = cdplog_signal(self.metrics, self.health, self.ledger, clock, logger)
        self._cdp_gap = cdp_liveness_gap(self.ledger, logger)  # restart evidence, too
        self.supervisor = Supervisor(metrics=self.metrics, logger=logger, clock=clock)
        self.probe_results: dict[str, ProbeResult] = {}
        self.control_url: str | None = None
        self._ready = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._rest: DiscordRestClient | None = None
        self._actions: ActionRunner | None = None
        self._probe_ctx: ProbeContext | None = None
        self._runner: web.AppRunner | None = None
        self._gate_runner: web.AppRunner | None = None
        self._upstream: aiohttp.ClientSession | None = None
        self.gate: Gate | None = None
        self.gate_url: str | None = None

    @property
    def breaker(self) -> HealthBreaker:
        return self.health.breaker

    @property
    def verdict(self) -> Verdict | None:
        return self.health.verdict

    @property
    def rest(self) -> DiscordRestClient:
        assert self._rest is not None, "daemon not started"
        return self._rest

    # -- loops ----------------------------------------------------------------------

    async def _probe_loop(self, name: str) -> None:
        ctx = self._probe_ctx
        assert ctx is not None
        while True:
            result = await run_probe(name, ctx)
            self.probe_results[name] = result
            self._cdp_gap(result)
            sample = record_probe(result, self.metrics, self.health)
            if sample is not None:
                self.health.add_sample(sample)
            if not result.ok:
                self.log.warning("probe %s failed: %s", name, result.detail)
            if all(n in self.probe_results for n in enabled_probes(self.config)):
                self._ready.set()
            # The context holds the live config: a reload changes the interval here.
            await self.clock.sleep(probe_interval(ctx.config, name))

    def evaluate_once(self) -> Verdict:
        return self.health.evaluate(self.clock.time())

    async def _cdplog_loop(self) -> None:
        lines = cdplog_lines(self.config.signals.cdp_log, clock=self.clock, logger=self.log)
        await self.cdplog.consume(lines)

    async def _reconcile_loop(self) -> None:
        def breaker_state() -> tuple[str, float]:
            return self.health.breaker_state(self.clock.time())

        while True:
            assert self.reconciler is not None
            # Read the attribute each pass: a reload may have built a new reconciler.
            await self.reconciler.step(breaker_state)
            await self.clock.sleep(1.0)

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            # Pet the watchdog while the event loop runs and health evaluation is alive: a
            # wedged daemon gets restarted, but one flapping side loop (say, a CDP log
            # command) must not take the gate, and so CDP, down with it.
            evaluate = self.supervisor.loops.get("evaluate")
            if evaluate is not None and evaluate.up:
                sd_notify("WATCHDOG=1", self.environ)
            await self.clock.sleep(interval)

    # -- ControlTarget --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            **self.health.status(self.clock.time()),
            "probes": redact({n: r.as_dict() for n, r in sorted(self.probe_results.items())}),
            **(
                self.reconciler.status()
                if self.reconciler is not None
                else {"channels": None, "reconcile": None}
            ),
            "gateway_session": self.watch.status(self.clock.time()),
            "gate": None if self.gate is None else self.gate.status(),
            **self.notices.status(self._rest),
            "loops": self.supervisor.status(),
            "ready": self._ready.is_set(),
        }

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return self.supervisor.alive(), {"loops": self.supervisor.status()}

    def ready(self) -> bool:
        return self._ready.is_set()

    async def pause(self, duration: float | None, reason: str | None) -> None:
        self.health.pause(self.clock.time(), duration, reason)

    async def resume(self) -> None:
        self.health.resume(self.clock.time())

    async def reconcile(self, dry_run: bool) -> dict[str, Any]:
        if self.reconciler is None:
            raise Unavailable("the daemon is not started")
        report = await self.reconciler.run(dry_run=dry_run, trigger="api")
        return report.as_dict()

    def _new_rest(self, config: Config, session: aiohttp.ClientSession | None) -> DiscordRestClient:
        return new_rest(config, session, metrics=self.metrics, clock=self.clock, logger=self.log)

    def _new_reconciler(self, config: Config) -> Reconciler:
        return new_reconciler(
            config, rest=self.rest, ledger=self.ledger, state_dir=self.state_dir,
            metrics=self.metrics, clock=self.clock, logger=self.log, live=self.watch.live,
            activity=gate_activity(lambda: self.gate),
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session, start the control API, the gate and every loop."""
        self.state_dir.lock()
        try:
            await self._start()
        except BaseException:
            await self._close()  # e.g. a port in use: no unclosed session left behind
            raise

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        self._rest = self._new_rest(self.config, None)  # on Discord's own session (its proxy)
        self._actions = ActionRunner(session=self._session, metrics=self.metrics, logger=self.log)
        self.effects.runner = self._actions
        self._probe_ctx = probe_context(
            self.config, session=self._session, rest=self._rest, clock=self.clock, logger=self.log
        )
        app = control_app(self.config, self, registry=self.registry, history=self.notices.history)
        self._runner, self.control_url = await serve(
            app, "control.listen", self.config.control.listen_address
        )
        if self.config.gate.enabled:
            await self._start_gate()
        self.watch.start(self.supervisor, rest=self._rest, http=self._rest.session)
        self._start_loops()

    def _start_loops(self) -> None:
        probes = enabled_probes(self.config)
        for name in probes:
            self.supervisor.start(f"probe:{name}", functools.partial(self._probe_loop, name))
        if not probes:
            self._ready.set()
        self.supervisor.start("evaluate", self.health.run)
        self.notices.start(self.supervisor, self.status, self.clock)
        self.reconciler = self._new_reconciler(self.config)
        self.supervisor.start("reconcile", self._reconcile_loop)
        if self.config.signals.cdp_log.enabled:
            self.supervisor.start("cdplog", self._cdplog_loop)
        interval = watchdog_interval(self.environ)
        if interval is not None:
            self.supervisor.start("watchdog", functools.partial(self._watchdog_loop, interval))

    async def _start_gate(self) -> None:
        self._upstream = new_upstream_session()
        self.gate = new_gate(
            self.config, health=self.health, metrics=self.metrics, clock=self.clock,
            logger=self.log, session=self._upstream, ledger=self.ledger, live=self.watch.live,
            blocked=lambda: self.rest.limiter.global_wait(),
        )  # fmt: skip
        self._gate_runner, self.gate_url = await serve(
            self.gate.app(), "gate.listen", self.config.gate.listen_address
        )

    async def stop(self) -> None:
        """Shut down in order: stop taking requests (gate), stop the loops, let a reconcile
        run finish its audited deletes, persist the ledger, then the control API and the
        sessions. Each step has its share of SHUTDOWN_BOUND."""
        if self._gate_runner is not None:
            await self._gate_runner.cleanup()  # in-flight requests get ~1 s to finish
            self._gate_runner = None
        await self.supervisor.stop(timeout=1.0)
        if self.reconciler is not None and not await self.reconciler.wait_idle(1.0):
            self.log.warning("shutdown: a reconcile run was still deleting; see audit.jsonl")
        if self._actions is not None:
            await self._actions.drain(timeout=0.3)
        await self.notices.close()
        self.ledger.flush()  # after the gate: failed requests' late channels are kept
        await self._close()

    async def _close(self) -> None:
        """Release sockets; also the last resort when shutdown ran out of time."""
        if self._gate_runner is not None:
            await self._gate_runner.cleanup()
            self._gate_runner = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        discord = None if self._rest is None else self._rest.session
        for session in (self._upstream, self._session, discord):
            if session is not None:
                await session.close()
        self._upstream = self._session = None  # the REST client's goes with it
        self.state_dir.unlock()

    def reload(self) -> bool:
        """Parse the config file fully, then swap; on error keep the old config."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path, environ=self.environ)
        except ConfigError as exc:
            self.metrics.config_last_reload_successful.set(0)
            self.log.error("reload failed, keeping the running config:\n%s", exc)
            return False
        self._swap(keep_fixed(self.config, new, self.log))
        self.metrics.config_last_reload_successful.set(1)
        self.log.info("configuration reloaded from %s", self.config_path)
        return True

    def _swap(self, new: Config) -> None:
        """Hand a validated config to every running component."""
        old = self.config
        set_secrets(config_secrets(new, self.environ))
        self.health.reconfigure(new)
        self.effects.actions = new.actions
        self.notices.reconfigure(new, self.environ, self.log)
        if new.discord != old.discord and self._rest is not None:
            self._rest = self._new_rest(new, self._rest.session)  # discord.proxy: at start
            if self.reconciler is not None:
                self.reconciler = self._new_reconciler(new)  # the loop takes it on its next pass
        elif self.reconciler is not None:
            self.reconciler.reconfigure(new.reconcile, new.discord.channel_limit, new.cdp)
        self.watch.reconfigure(new, rest=self.rest)
        self.config = new
        if self._probe_ctx is not None:
            self._probe_ctx.config = new
            if self._rest is not None:
                self._probe_ctx.rest = self._rest

    async def run(self, stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
        """Run until `stop` is set; `reload` (SIGHUP) triggers an atomic reload."""
        reload = reload or asyncio.Event()
        await self.start()
        ready_task = asyncio.create_task(self._announce_ready())
        try:
            while not stop.is_set():
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if reload.is_set():
                    reload.clear()
                    sd_notify("RELOADING=1", self.environ)
                    self.reload()
                    sd_notify("READY=1", self.environ)
        finally:
            ready_task.cancel()
            sd_notify("STOPPING=1", self.environ)
            try:
                await asyncio.wait_for(self.stop(), SHUTDOWN_BOUND)
            except TimeoutError:
                self.log.warning("shutdown took over %ss; closing what is left", SHUTDOWN_BOUND)
                self.ledger.flush()
                await self._close()

    async def _announce_ready(self) -> None:
        await self._ready.wait()
        self.log.info("ready: first probe round done, control API on %s", self.control_url)
        sd_notify(f"READY=1\nSTATUS=breaker {self.breaker.state}", self.environ)


async def run_daemon(
    config_path: Path, *, environ: Mapping[str, str] | None = None, log: tuple[str, str] = ("", "")
) -> None:
    """`cdp-monitor run` (ConfigError propagates); `log`: the command line's level, format."""
    env = dict(os.environ if environ is None else environ)
    config = load_config(config_path, environ=env)
    level, fmt = log[0] or config.log.level, log[1] or config.log.format
    logger = setup_logging(level, fmt, config_secrets(config, env))
    daemon = Daemon(
        config, registry=CollectorRegistry(), logger=logger, config_path=config_path, environ=env
    )
    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers only set events; the run loop does the work.
    for sig, event in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, reload)):
        loop.add_signal_handler(sig, event.set)
    logger.info("cdp-monitor starting (config %s, guild %s)", config_path, config.discord.guild_id)
    await daemon.run(stop, reload)
    logger.info("cdp-monitor stopped")
