"""The one run loop, shared by `cdp-monitor demo` and `bench/incident.py`.

One run starts, on free loopback ports, the Discord simulator, the CDP emulator (CDP's
v4.6.5's real leak mechanism: creates serialised on discordgo's bucket lock, 429s slept
out, a 20 s client timeout, abandoned attempts that still create their channel), a load
of `openai` clients sending chat requests at a steady rate (retrying failed requests the
way the SDK does, `Retry-After` included) and, for a run with cdp-monitor ("with",
"breaker", "limit"), the daemon with its real components. A scripted timeline puts
Discord (or CDP itself) into an outage (a `ramp` worsens step by step) and takes it out
again; a watcher samples the guild and reports what happened as structured events.
Time is compressed (every CDP timer divided by 40: an attempt timeout of 1.5 s instead
of 60 s; probes every 250 ms, a breaker that opens for 2 s), so a run takes about half
a minute.

    report = await run_incident(ScenarioSettings(seed=7))   # without, then with
    print(format_summary(report))                            # monitor.demo.results
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from monitor.demo.events import (
    Draining,
    Event,
    OutageStarted,
    Recovered,
    RunFinished,
    RunStarted,
    Tick,
)
from monitor.demo.load import LoadGenerator, import_openai
from monitor.demo.observe import DaemonView
from monitor.demo.results import IncidentReport, RunResult
from monitor.demo.settings import (
    DEFAULT_RUNS,
    RUN_KINDS,
    RunKind,
    ScenarioSettings,
    cdp_faults,
    daemon_config_dict,
    outage_steps,
    run_kinds,
)
from monitor.demo.watch import Watcher
from monitor.errors import ScenarioError
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.vocab import CHANNEL_PREFIX

EventSink = Callable[[Event], None]
TickSink = Callable[[Tick], None]
STOP_WITHIN = 10.0  # seconds for the clients and the daemon to stop
_LOG = logging.getLogger("monitor.demo.run")


class _Run:
    """One run: its servers, its load, its timeline; a `Watcher` records what they did."""

    def __init__(
        self,
        settings: ScenarioSettings,
        *,
        kind: RunKind,
        workdir: Path,
        on_event: EventSink | None,
        on_tick: TickSink | None,
        stop: asyncio.Event,
        logger: logging.Logger,
    ) -> None:
        self.s = settings
        self.kind = kind
        self.with_monitor = kind.monitor
        self.workdir = workdir
        self._on_event = on_event
        self._on_tick = on_tick
        self._stop = stop
        self._log = logger
        self.result = RunResult(run=kind.name, settings=settings)
        self.sim: DiscordSimulator | None = None
        self.cdp: CdpEmulator | None = None
        self.daemon: DaemonView | None = None
        self.load: LoadGenerator | None = None
        self.watch: Watcher | None = None
        self._t0 = 0.0
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time() - self._t0

    def emit(self, event: Event) -> None:
        self.result.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    async def sleep_until(self, t: float) -> bool:
        """Sleep until `t` (run time); False if the stop event came first."""
        wait = t - self.now()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
        return not self._stop.is_set()

    # -- world ----------------------------------------------------------------------

    async def start_world(self, http: aiohttp.ClientSession) -> Watcher:
        s = self.s
        sim = self.sim = DiscordSimulator(SimSettings(channel_limit=s.channel_limit, seed=s.seed))
        await sim.start("127.0.0.1", 0)
        cdp_log = self.workdir / "cdp.log"
        cdp_log.touch()
        cdp = self.cdp = CdpEmulator(
            CdpSettings.for_simulator(
                sim,
                time_scale=s.time_scale,
                reply_delay=s.reply_delay,
                # CHANNEL_AUTO_DEL_TIME in CDP's seconds: `auto_delete` here once scaled
                auto_delete=s.auto_delete * s.time_scale,
                stay_active_enable="0",  # not at 09:10 during a demo
                log_path=cdp_log,
                seed=s.seed,
            )
        )
        await cdp.start("127.0.0.1", 0)
        watch = self.watch = Watcher(
            s, self.result, sim=sim, cdp=cdp, now=self.now, emit=self.emit, on_tick=self._on_tick
        )
        await self._coze_thinks(http)
        if s.prefill:
            watch.seeded = await self._seed(http, sim)
        return watch

    async def _coze_thinks(self, http: aiohttp.ClientSession) -> None:
        """Coze answers after `reply_delay`: longer than CDP's (scaled) 1 s sleep after
        the prompt, after which CDP starts listening for the reply (chat.go:291)."""
        assert self.sim is not None
        body = {"coze": {"delay_ms": self.s.reply_delay * 1000}}
        async with http.put(self.sim.admin_url + "/faults", json=body) as resp:
            resp.raise_for_status()

    async def _seed(self, http: aiohttp.ClientSession, sim: DiscordSimulator) -> set[int]:
        url = f"{sim.admin_url}/guilds/{sim.settings.guild_id}/channels"
        body = {"count": self.s.prefill, "prefix": CHANNEL_PREFIX, "age_seconds": 3600}
        async with http.post(url, json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise ScenarioError(f"seeding leaked channels failed: {data}")
        return {int(cid) for cid in data["channels"]}

    async def start_daemon(self, watch: Watcher) -> str:
        assert self.sim is not None and self.cdp is not None
        config = daemon_config_dict(
            self.s,
            self.sim,
            self.cdp,
            state_dir=self.workdir / "state",
            cdp_log=self.workdir / "cdp.log",
            adaptive_limit=self.kind.adaptive_limit,
        )
        daemon = self.daemon = watch.daemon = DaemonView(config, logger=self._log)
        daemon.on_transition(watch.on_transition)
        return await daemon.start()

    async def stop_world(self) -> None:
        """Tear down in reverse order; a failure here is logged, never masks the run's."""
        try:
            if self.load is not None:
                await asyncio.wait_for(self.load.close(), STOP_WITHIN)
            if self.daemon is not None:
                await self.daemon.stop(STOP_WITHIN)
        except Exception:
            _LOG.exception("scenario: stopping the clients or the daemon failed")
        if self.cdp is not None:
            await self.cdp.stop()
        if self.sim is not None:
            await self.sim.stop()

    # -- the timeline ---------------------------------------------------------------

    async def sampler(self, watch: Watcher) -> None:
        while True:
            watch.sample()
            await asyncio.sleep(self.s.sample_interval)

    async def timeline(self, http: aiohttp.ClientSession, watch: Watcher) -> None:
        assert self.sim is not None and self.load is not None
        if not await self._load_through_outage(http, watch, self.sim.admin_url + "/faults"):
            return
        watch.phase = "draining"
        self.emit(Draining(**watch.stamp()))
        drain = asyncio.create_task(self.load.drain(self.s.client_timeout))
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({drain, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            return
        watch.phase = "cleanup"
        await self._wait_for_rest(watch)

    async def _load_through_outage(
        self, http: aiohttp.ClientSession, watch: Watcher, faults_url: str
    ) -> bool:
        """Healthy, outage, recovered, with the load on; False if stopped early."""
        s = self.s
        assert self.load is not None
        load_stop = asyncio.Event()
        load_task = asyncio.create_task(self.load.run(load_stop))
        try:
            steps = outage_steps(s)
            if not await self.sleep_until(s.healthy):
                return False
            async with http.put(faults_url, json=steps[0][1]) as resp:
                resp.raise_for_status()
            await self._cdp_faults(http, cdp_faults(s))
            watch.phase = "outage"
            self.emit(
                OutageStarted(
                    **watch.stamp(),
                    kind=s.outage_kind,
                    create_latency=s.create_latency,
                    attempt_timeout=s.attempt_timeout,
                    attempts=s.attempts,
                )
            )
            for offset, body in steps[1:]:  # a ramp: the same fault, worse each step
                if not await self.sleep_until(s.healthy + offset):
                    return False
                async with http.put(faults_url, json=body) as resp:
                    resp.raise_for_status()
            if not await self.sleep_until(s.recovery_at):
                return False
            async with http.delete(faults_url) as resp:
                resp.raise_for_status()
            await self._coze_thinks(http)
            if cdp_faults(s) is not None:
                assert self.cdp is not None
                await self._cdp_faults(http, {"user_tokens": list(self.cdp.settings.user_auths)})
            watch.phase = "recovered"
            watch.recovered_at = self.now()
            self.emit(Recovered(**watch.stamp()))
            return await self.sleep_until(s.load_until)
        finally:
            load_stop.set()
            await load_task

    async def _cdp_faults(self, http: aiohttp.ClientSession, body: dict[str, Any] | None) -> None:
        """CDP's own trouble, through the emulator's admin API."""
        if body is None:
            return
        assert self.cdp is not None
        async with http.put(self.cdp.admin_url + "/faults", json=body) as resp:
            resp.raise_for_status()

    async def _wait_for_rest(self, watch: Watcher) -> None:
        """Until CDP is idle and (with cdp-monitor) the guild clean, at most `tail` s."""
        deadline = self.now() + self.s.tail
        quiet_since: float | None = None
        while self.now() < deadline and not self._stop.is_set():
            tick = watch.sample()
            if watch.settled():
                quiet_since = quiet_since if quiet_since is not None else tick.t
                # Without cdp-monitor nothing will ever clean up: a settled CDP is the end.
                clean = tick.leaked == 0 or not self.with_monitor
                if clean and tick.t - quiet_since >= 1.0:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(self.s.sample_interval)

    async def execute(self) -> RunResult:
        async with aiohttp.ClientSession() as http:
            try:
                watch = await self.start_world(http)
                assert self.cdp is not None
                base = self.cdp.base_url
                if self.with_monitor:
                    base = await self.start_daemon(watch)
                self.load = watch.load = LoadGenerator(base + "/v1", self.s)
                self._t0 = self._loop.time()
                sampler = asyncio.create_task(self.sampler(watch))
                try:
                    await self.timeline(http, watch)
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                self.result.interrupted = self._stop.is_set()
                return watch.finish()
            finally:
                await self.stop_world()


async def run_once(
    settings: ScenarioSettings,
    *,
    with_monitor: bool = False,
    run: str | None = None,
    workdir: Path | None = None,
    on_event: EventSink | None = None,
    on_tick: TickSink | None = None,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | None = None,
) -> RunResult:
    """One run of the scenario, with or without cdp-monitor in front of CDP; `run`
    names a `RUN_KINDS` entry instead (e.g. "breaker": the gate without its limit).

    `stop` ends it early (the result says `interrupted`); `logger` receives the
    daemon's log (default: the `monitor.demo.daemon` logger).
    """
    kind = RUN_KINDS[run or ("with" if with_monitor else "without")]
    import_openai()  # fail before starting anything
    stop = stop or asyncio.Event()
    logger = logger or logging.getLogger("monitor.demo.daemon")
    with _workdir(workdir) as base:
        run_dir = base / kind.name
        run_dir.mkdir(parents=True, exist_ok=True)
        one = _Run(
            settings,
            kind=kind,
            workdir=run_dir,
            on_event=on_event,
            on_tick=on_tick,
            stop=stop,
            logger=logger,
        )
        return await one.execute()


async def run_incident(
    settings: ScenarioSettings,
    *,
    runs: str | tuple[str, ...] = DEFAULT_RUNS,
    workdir: Path | None = None,
    on_event: EventSink | None = None,
    on_tick: TickSink | None = None,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | None = None,
) -> IncidentReport:
    """The runs named by `runs` (`RUN_KINDS`), one after the other with the same
    settings and seed: by default without cdp-monitor, then with it. `on_event` also
    hears `RunStarted` and `RunFinished` around each run."""
    stop = stop or asyncio.Event()
    report = IncidentReport(settings)
    kinds = run_kinds(runs)
    with _workdir(workdir) as base:
        for number, kind in enumerate(kinds, start=1):
            if stop.is_set():
                break
            name = kind.name
            if on_event is not None:
                on_event(RunStarted(t=0.0, run=name, number=number, with_monitor=kind.monitor))
            result = await run_once(
                settings,
                run=name,
                workdir=base,
                on_event=on_event,
                on_tick=on_tick,
                stop=stop,
                logger=logger,
            )
            if on_event is not None:
                on_event(
                    RunFinished(
                        t=result.duration,
                        run=name,
                        duration=result.duration,
                        interrupted=result.interrupted,
                    )
                )
            report.runs.append(result)
    return report


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="cdp-monitor-scenario-") as tmp:
        yield Path(tmp)
