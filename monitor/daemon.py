"""The daemon: builds components from config, supervises their loops, handles signals,
reloads atomically and talks to systemd (sd_notify)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor import USER_AGENT
from monitor.actions import ActionRunner
from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import Config, HostPort, load_config
from monitor.control import Unavailable, build_control_app
from monitor.discord.rest import DiscordRestClient
from monitor.errors import ConfigError, MonitorError
from monitor.gate import Gate, new_upstream_session
from monitor.health.breaker import BreakerSettings, HealthBreaker
from monitor.health.cdplog import CdpLogEvent, CdpLogSignal, follow_command, follow_file
from monitor.health.probes import (
    ProbeContext,
    ProbeResult,
    enabled_probes,
    probe_interval,
    record_probe,
    run_probe,
)
from monitor.health.window import Sample, SampleWindow, Verdict, WindowSettings, evaluate
from monitor.httpserve import start_site
from monitor.ledger import RequestLedger
from monitor.logs import set_secrets, setup_logging
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler
from monitor.state import StateDir

SHUTDOWN_BOUND = 4.0  # seconds; SIGTERM must finish well inside systemd's stop timeout


# -- systemd ------------------------------------------------------------------------------


def sd_notify(message: str, environ: Mapping[str, str]) -> bool:
    """Send one sd_notify datagram; False when not run by systemd (no NOTIFY_SOCKET)."""
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of systemd's WatchdogSec, if systemd asked for keep-alives for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2_000_000)
    except ValueError:
        return None


# -- loop supervision ---------------------------------------------------------------------


@dataclass
class LoopState:
    up: bool = False
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs named loops; a crashing loop is logged, counted and restarted with backoff."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        logger: logging.Logger,
        clock: Clock,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
    ) -> None:
        self._metrics = metrics
        self._log = logger
        self._clock = clock
        self._base = backoff_base
        self._cap = backoff_cap
        self.loops: dict[str, LoopState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        self.loops[name] = LoopState()
        self._tasks[name] = asyncio.create_task(self._keep(name, body), name=name)

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        state = self.loops[name]
        failures = 0
        while True:
            state.up = True
            self._metrics.loop_up.labels(loop=name).set(1)
            started = self._clock.monotonic()
            try:
                await body()
                error = "loop returned"
            except asyncio.CancelledError:
                state.up = False
                self._metrics.loop_up.labels(loop=name).set(0)
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._log.exception("loop %s crashed", name)
            state.up = False
            state.restarts += 1
            state.last_error = error
            self._metrics.loop_up.labels(loop=name).set(0)
            self._metrics.loop_restarts.labels(loop=name).inc()
            # A loop that ran a good while before failing starts its backoff afresh.
            failures = 1 if self._clock.monotonic() - started > self._cap else failures + 1
            delay = min(self._cap, self._base * 2 ** (failures - 1))
            self._log.warning("loop %s down (%s); restarting in %.1fs", name, error, delay)
            await self._clock.sleep(delay)

    def alive(self) -> bool:
        return all(s.up for s in self.loops.values())

    def status(self) -> dict[str, Any]:
        return {
            name: {"up": s.up, "restarts": s.restarts, "last_error": s.last_error}
            for name, s in self.loops.items()
        }

    async def stop(self, timeout: float) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        self._tasks.clear()


# -- the daemon ---------------------------------------------------------------------------


def config_secrets(config: Config) -> list[str]:
    """Values that must never reach a log line."""
    secrets = [config.discord.token.get_secret_value()]
    if config.control.token is not None:
        secrets.append(config.control.token.get_secret_value())
    return secrets


def window_settings(config: Config) -> WindowSettings:
    h = config.health
    return WindowSettings(
        window=h.window,
        min_samples=h.min_samples,
        source_min_samples=h.source_min_samples,
        failure_ratio=h.failure_ratio,
        slow_ratio=h.slow_ratio,
        slow_thresholds={
            "gateway": config.probes.gateway.slow,
            "rest": config.probes.rest.slow,
        },
    )


def breaker_settings(config: Config) -> BreakerSettings:
    b = config.breaker
    return BreakerSettings(
        reset_timeout=b.reset_timeout,
        success_threshold=b.success_threshold,
        backoff_factor=b.backoff_factor,
        max_reset_timeout=max(b.max_reset_timeout, b.reset_timeout),
        backoff_reset_after=b.backoff_reset_after,
        half_open_max_trials=config.gate.half_open_trials,
    )


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
        self.window = SampleWindow()
        self.ledger = RequestLedger(state_dir=self.state_dir, clock=clock, logger=logger)
        self.reconciler: Reconciler | None = None
        self.breaker = self._new_breaker(config)
        self.supervisor = Supervisor(metrics=self.metrics, logger=logger, clock=clock)
        self.probe_results: dict[str, ProbeResult] = {}
        self.verdict: Verdict | None = None
        self.last_evaluation: float | None = None
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

    # -- construction ---------------------------------------------------------------

    def _new_breaker(self, config: Config) -> HealthBreaker:
        breaker = HealthBreaker(
            breaker_settings(config),
            state_dir=self.state_dir,
            listeners=[self._on_transition],
            logger=self.log,
            now=self.clock.time(),
        )
        self.metrics.set_breaker_state(breaker.state)
        self.metrics.paused.set(1 if breaker.paused else 0)
        return breaker

    def _new_rest(self, config: Config, session: aiohttp.ClientSession) -> DiscordRestClient:
        return DiscordRestClient.from_config(
            config.discord, session=session, metrics=self.metrics, clock=self.clock, logger=self.log
        )

    @property
    def rest(self) -> DiscordRestClient:
        assert self._rest is not None, "daemon not started"
        return self._rest

    # -- breaker transitions --------------------------------------------------------

    def _on_transition(self, old: str, new: str, reason: str, now: float) -> None:
        self.metrics.set_breaker_state(new)
        self.metrics.breaker_transitions.labels(to=new).inc()
        self.metrics.paused.set(1 if new == "forced_open" else 0)
        level = logging.WARNING if new in ("open", "forced_open") else logging.INFO
        self.log.log(level, "breaker %s -> %s: %s", old, new, reason)
        sd_notify(f"STATUS=breaker {new}: {reason}"[:200], self.environ)
        if self._actions is None:
            return
        event = {"state": new, "previous": old, "reason": reason, "at": now}
        actions = self.config.actions
        if new in ("open", "forced_open") and old not in ("open", "forced_open"):
            self._actions.fire(actions.on_open, event, actions.timeout)
        elif new == "closed":
            self._actions.fire(actions.on_close, event, actions.timeout)

    # -- loops ----------------------------------------------------------------------

    async def _probe_loop(self, name: str) -> None:
        assert self._probe_ctx is not None
        while True:
            result = await run_probe(name, self._probe_ctx)
            self.probe_results[name] = result
            sample = record_probe(result, self.metrics)
            if sample is not None:
                self.window.append(sample)
            if not result.ok:
                self.log.warning("probe %s failed: %s", name, result.detail)
            if all(n in self.probe_results for n in enabled_probes(self.config)):
                self._ready.set()
            await self.clock.sleep(probe_interval(self.config, name))

    def evaluate_once(self) -> Verdict:
        now = self.clock.time()
        settings = window_settings(self.config)
        self.window.prune(now, settings.window)
        samples: Iterable[Sample] = self.window
        self.breaker.tick(now)  # an open period that just ended is half-open from now
        if self.breaker.state == "half_open":
            # Judge a trial only on what happened since it began: the outage's failures
            # still in the window would otherwise reopen a recovered breaker.
            since = self.breaker.since
            samples = [s for s in self.window if s.at >= since]
        verdict = evaluate(samples, now, settings)
        self.breaker.record_verdict(verdict, now)
        self.metrics.health_failure_ratio.set(verdict.failure_ratio)
        self.metrics.health_slow_ratio.set(verdict.slow_ratio)
        self.verdict = verdict
        self.last_evaluation = now
        return verdict

    async def _evaluate_loop(self) -> None:
        while True:
            self.evaluate_once()
            await self.clock.sleep(self.config.health.evaluate_interval)

    def add_sample(self, sample: Sample) -> None:
        """Passive signals (CDP log, gate outcomes) feed the window through here."""
        self.window.append(sample)

    def _on_cdplog_event(self, event: CdpLogEvent) -> None:
        sample = event.sample(self.clock.time())
        if sample is not None:
            self.add_sample(sample)

    async def _cdplog_loop(self) -> None:
        cfg = self.config.signals.cdp_log
        if cfg.file is not None:
            lines = follow_file(cfg.file, clock=self.clock)
        else:
            assert cfg.command is not None
            lines = follow_command(
                list(cfg.command),
                clock=self.clock,
                backoff_base=cfg.restart_backoff,
                logger=self.log,
            )
        signal_ = CdpLogSignal(metrics=self.metrics, sink=self._on_cdplog_event, logger=self.log)
        await signal_.consume(lines)

    async def _reconcile_loop(self) -> None:
        while True:
            assert self.reconciler is not None
            # Read the attribute each pass: a reload may have built a new reconciler.
            await self.reconciler.step(self._breaker_state)
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
        now = self.clock.time()
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
            "probes": {name: r.as_dict() for name, r in sorted(self.probe_results.items())},
            **(
                self.reconciler.status()
                if self.reconciler is not None
                else {"channels": None, "reconcile": None}
            ),
            "gate": None if self.gate is None else self.gate.status(),
            "discord": {"token_invalid": self._rest.token_invalid if self._rest else False},
            "loops": self.supervisor.status(),
            "ready": self._ready.is_set(),
        }

    def health_machinery_ok(self) -> bool:
        """False when evaluations stopped (a crashed or stuck loop): the gate fails open."""
        loop = self.supervisor.loops.get("evaluate")
        if loop is not None and not loop.up:
            return False
        if loop is None or self.last_evaluation is None:
            return True  # not started, or the first evaluation is still to come
        stale_after = max(5.0, 3 * self.config.health.evaluate_interval)
        return self.clock.time() - self.last_evaluation <= stale_after

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return self.supervisor.alive(), {"loops": self.supervisor.status()}

    def ready(self) -> bool:
        return self._ready.is_set()

    async def pause(self, duration: float | None, reason: str | None) -> None:
        now = self.clock.time()
        until = None if duration is None else now + duration
        self.breaker.pause(now, reason=reason or "manual pause", until=until)

    async def resume(self) -> None:
        if self.breaker.resume(self.clock.time()):
            # A resume closes the breaker; judge the window at once so that resuming during
            # an outage reopens it now rather than at the next evaluation.
            self.evaluate_once()

    async def reconcile(self, dry_run: bool) -> dict[str, Any]:
        if self.reconciler is None:
            raise Unavailable("the daemon is not started")
        report = await self.reconciler.run(dry_run=dry_run, trigger="api")
        return report.as_dict()

    def _breaker_state(self) -> tuple[str, float]:
        self.breaker.tick(self.clock.time())
        return self.breaker.state, self.breaker.since

    def _new_reconciler(self, config: Config) -> Reconciler:
        return Reconciler.from_config(
            config,
            rest=self.rest,
            ledger=self.ledger,
            state_dir=self.state_dir,
            metrics=self.metrics,
            clock=self.clock,
            logger=self.log,
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session, start the control API and every loop."""
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        self._rest = self._new_rest(self.config, self._session)
        self._actions = ActionRunner(session=self._session, metrics=self.metrics, logger=self.log)
        self._probe_ctx = ProbeContext(
            config=self.config,
            session=self._session,
            rest=self._rest,
            clock=self.clock,
            logger=self.log,
        )
        await self._start_control()
        if self.config.gate.enabled:
            await self._start_gate()
        for name in enabled_probes(self.config):
            self.supervisor.start(f"probe:{name}", functools.partial(self._probe_loop, name))
        if not enabled_probes(self.config):
            self._ready.set()
        self.supervisor.start("evaluate", self._evaluate_loop)
        self.reconciler = self._new_reconciler(self.config)
        self.supervisor.start("reconcile", self._reconcile_loop)
        if self.config.signals.cdp_log.enabled:
            self.supervisor.start("cdplog", self._cdplog_loop)
        interval = watchdog_interval(self.environ)
        if interval is not None:
            self.supervisor.start("watchdog", functools.partial(self._watchdog_loop, interval))

    async def _start_control(self) -> None:
        cfg = self.config.control
        token = cfg.token.get_secret_value() if cfg.token is not None else None
        app = build_control_app(self, registry=self.registry, token=token)
        self._runner, self.control_url = await self._serve(
            app, "control.listen", cfg.listen_address
        )

    async def _serve(
        self, app: web.Application, key: str, address: HostPort
    ) -> tuple[web.AppRunner, str]:
        """Start `app` on `address`; returns the runner and the URL it answers on."""
        try:
            runner, port = await start_site(app, address.host, address.port)
        except OSError as exc:
            raise MonitorError(
                f"{key} {address.host}:{address.port}: cannot listen: {exc.strerror}"
            ) from None
        host = address.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        host = host if ":" not in host else f"[{host}]"
        return runner, f"http://{host}:{port}"

    async def _start_gate(self) -> None:
        cfg = self.config.gate
        self._upstream = new_upstream_session()
        self.gate = Gate(
            cfg,
            breaker=lambda: self.breaker,
            metrics=self.metrics,
            clock=self.clock,
            logger=self.log,
            session=self._upstream,
            health_ok=self.health_machinery_ok,
            add_sample=self.add_sample if self.config.signals.gate else None,
            ledger=self.ledger,
        )
        self._gate_runner, self.gate_url = await self._serve(
            self.gate.app(), "gate.listen", cfg.listen_address
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
        for session in (self._upstream, self._session):
            if session is not None:
                await session.close()
        self._upstream = self._session = None

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
        old = self.config
        # These are built once at start (listeners, loops, log handler): keep the running
        # values and say so, rather than claim a change that did not happen.
        fixed = ("control", "state_dir", "gate", "signals", "log")
        for key in fixed:
            if getattr(old, key) != getattr(new, key):
                self.log.warning("reload: %s changed; it takes effect after a restart", key)
        if enabled_probes(old) != enabled_probes(new):
            self.log.warning("reload: the set of enabled probes takes effect after a restart")
        new = new.model_copy(update={key: getattr(old, key) for key in fixed})
        set_secrets(config_secrets(new))
        if breaker_settings(new) != breaker_settings(old):
            self.breaker.reconfigure(breaker_settings(new))
        if new.discord != old.discord and self._session is not None:
            self._rest = self._new_rest(new, self._session)
            if self.reconciler is not None:
                self.reconciler = self._new_reconciler(new)  # the loop takes it on its next pass
        elif self.reconciler is not None:
            self.reconciler.reconfigure(new.reconcile, channel_limit=new.discord.channel_limit)
        self.config = new
        if self._probe_ctx is not None:
            self._probe_ctx.config = new
            if self._rest is not None:
                self._probe_ctx.rest = self._rest
        self.metrics.config_last_reload_successful.set(1)
        self.log.info("configuration reloaded from %s", self.config_path)
        return True

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


async def run_daemon(config_path: Path, *, environ: Mapping[str, str] | None = None) -> None:
    """`cdp-monitor run`: load config (ConfigError propagates), run until SIGTERM/SIGINT."""
    env = dict(os.environ if environ is None else environ)
    config = load_config(config_path, environ=env)
    logger = setup_logging(config.log.level, config.log.format, config_secrets(config))
    daemon = Daemon(
        config, registry=CollectorRegistry(), logger=logger, config_path=config_path, environ=env
    )
    stop, reload = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers only set events; the run loop does the work.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    logger.info("cdp-monitor starting (config %s, guild %s)", config_path, config.discord.guild_id)
    await daemon.run(stop, reload)
    logger.info("cdp-monitor stopped")
