"""The incident, replayed: Discord wobbles, CDP leaks channels, and cdp-monitor (or nothing)
stands in between.

One run starts, on free loopback ports, the Discord simulator, the CDP emulator (CDP's
real leak behaviour: a timed-out create attempt is never cancelled, so its channel
appears later with no delete timer), a load of `openai` clients sending chat requests at
a steady rate (retrying failed requests the way the SDK does, `Retry-After` included)
and, for the run "with", the daemon with its real components. A scripted timeline puts
Discord into an outage and takes it out again; a sampler watches the guild and reports
what happened. Time is compressed (a CDP attempt timeout of 1.5 s instead of 60 s,
probes every 250 ms, a breaker that opens for 2 s), so both runs take about a minute.

    settings = ScenarioSettings(seed=7)
    report = await run_incident(settings)        # without, then with cdp-monitor
    print(format_summary(report))

The numbers come from the simulator and the emulator themselves (channels in the guild,
Discord's 429s and 30013 answers, CDP's log), not from the daemon's view of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.errors import ScenarioError
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.vocab import CHANNEL_PREFIX

OUTAGE_KINDS: dict[str, str] = {
    "slow": "channel creation hangs past CDP's attempt timeout, GET /gateway/bot is slow, "
    "and the gateway sends HELLO late",
    "refuse": "channel creation hangs past CDP's attempt timeout and the gateway refuses "
    "connections",
    "flaky": "channel creation hangs and often fails with 500, GET /gateway/bot fails, "
    "and the gateway closes connections with 4000",
}
SCENARIOS = ("incident", "prefill")
CREATE_ROUTE = "POST /guilds/{guild_id}/channels"
# Every route cdp-monitor itself calls (probes, census, reconcile re-check and delete).
MONITOR_ROUTES = frozenset(
    {
        "GET /gateway",
        "GET /gateway/bot",
        "GET /users/@me",
        "GET /guilds/{guild_id}/channels",
        "GET /channels/{channel_id}",
        "DELETE /channels/{channel_id}",
    }
)
# Gate refusals (DESIGN section 7): the client is told to come back later.
REFUSAL_CODES = frozenset({"discord_unstable", "create_queue_full"})
_LOG = logging.getLogger("monitor.sim.scenario")


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioSettings:
    """Everything a run depends on; both runs of an incident use the same settings."""

    scenario: str = "incident"  # incident | prefill (the guild starts 95% full of leaks)
    seed: int = 7
    rate: float = 3.0  # client chat requests per second
    healthy: float = 4.0  # seconds of normal traffic before the outage
    outage: float = 10.0  # seconds Discord is unstable
    outage_kind: str = "slow"
    after: float = 8.0  # seconds of traffic after Discord recovers
    tail: float = 20.0  # at most this long after the load stops, waiting for a clean guild
    attempt_timeout: float = 1.5  # CDP's per-attempt create timeout (60 s in real CDP)
    attempts: int = 3  # CDP's CreateChannelWithRetry attempts
    reply_delay: float = 0.2  # the Coze bot thinking
    auto_delete: float = 1.0  # CHANNEL_AUTO_DEL_TIME
    client_retries: int = 2  # the openai SDK's max_retries
    client_timeout: float = 30.0
    channel_limit: int = 500
    prefill: int = 0  # old empty cdp-chat- channels in the guild before the run
    max_concurrent_creates: int = 4
    create_rate: float = 4.0  # gate.create_rate: under Discord's 5/s create bucket
    when_open: str = "reject"  # gate.when_open: refuse at once, or hold up to hold_max
    hold_max: float = 10.0
    high_watermark: float = 0.8
    sample_interval: float = 0.25

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario must be one of {', '.join(SCENARIOS)}")
        if self.when_open not in ("reject", "hold") or self.hold_max <= 0:
            problems.append("when_open must be reject or hold, with a positive hold_max")
        if self.outage_kind not in OUTAGE_KINDS:
            problems.append(f"outage_kind must be one of {', '.join(OUTAGE_KINDS)}")
        if self.rate <= 0:
            problems.append("rate must be positive")
        for name in ("healthy", "outage", "after", "tail", "attempt_timeout", "client_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.attempts < 1 or self.max_concurrent_creates < 1:
            problems.append("attempts and max_concurrent_creates must be at least 1")
        if self.client_retries < 0 or self.reply_delay < 0 or self.auto_delete < 0:
            problems.append("client_retries, reply_delay and auto_delete must not be negative")
        if not 0 <= self.prefill <= self.channel_limit:
            problems.append("prefill must be between 0 and channel_limit")
        if not 0 < self.high_watermark <= 1:
            problems.append("high_watermark must be in (0, 1]")
        if self.sample_interval <= 0:
            problems.append("sample_interval must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def recovery_at(self) -> float:
        return self.healthy + self.outage

    @property
    def load_until(self) -> float:
        return self.healthy + self.outage + self.after

    @property
    def create_latency(self) -> float:
        """How long Discord takes to create a channel during the outage (seconds)."""
        return 2.5 * self.attempt_timeout

    @property
    def watermark_channels(self) -> int:
        return math.ceil(self.high_watermark * self.channel_limit)


def prefill_settings(**overrides: Any) -> ScenarioSettings:
    """The second scenario: leaks already fill 95% of the guild before the outage."""
    # A longer tail: the reconciler paces its deletes to spare CDP's rate limits, and
    # 475 old leaks take it about a minute.
    base: dict[str, Any] = {
        "scenario": "prefill",
        "prefill": 475,
        "channel_limit": 500,
        "tail": 60.0,
    }
    base.update(overrides)
    return ScenarioSettings(**base)


def outage_faults(settings: ScenarioSettings) -> dict[str, Any]:
    """The body of `PUT /_sim/faults` that starts the outage."""
    latency = settings.create_latency * 1000
    jitter = settings.attempt_timeout * 400
    kind = settings.outage_kind
    if kind == "slow":
        return {
            "rest": {
                "latency_ms": latency,
                "jitter_ms": jitter,
                "routes": [CREATE_ROUTE, "GET /gateway/bot"],
            },
            "gateway": {"hello_delay_ms": 3000},
        }
    if kind == "refuse":
        return {
            "rest": {"latency_ms": latency, "jitter_ms": jitter, "routes": [CREATE_ROUTE]},
            "gateway": {"refuse": True},
        }
    return {
        "rest": {
            "latency_ms": latency,
            "jitter_ms": jitter,
            "error_rate": 0.4,
            "error_status": 500,
            "routes": [CREATE_ROUTE, "GET /gateway/bot"],
        },
        "gateway": {"close_code": 4000},
    }


def daemon_config_dict(
    settings: ScenarioSettings,
    sim: DiscordSimulator,
    cdp: CdpEmulator,
    *,
    state_dir: Path,
    cdp_log: Path,
) -> dict[str, Any]:
    """The daemon's config with time compressed as much as CDP's timeouts are."""
    return {
        "discord": {
            "token": sim.settings.token,
            "guild_id": str(sim.settings.guild_id),
            "api_base": sim.api_base,
            "gateway_url": sim.gateway_url,
            "request_timeout": "2s",
            "max_retries": 1,
            # CDP shares the bot's 50 requests/s: leave it most of them.
            "global_rate": 20,
            "channel_limit": settings.channel_limit,
        },
        "probes": {
            "gateway": {"interval": "250ms", "timeout": "1s", "slow": "800ms"},
            # GET /gateway/bot is limited to 5 per 5 s: probe it well inside that.
            "rest": {"interval": "1500ms", "timeout": "1s", "slow": "800ms"},
            "cdp": {"enabled": True, "interval": "1s", "timeout": "1s"},
        },
        "signals": {"cdp_log": {"enabled": True, "file": str(cdp_log)}, "gate": True},
        "health": {
            "window": "2500ms",
            "min_samples": 3,
            "evaluate_interval": "250ms",
        },
        "breaker": {
            "reset_timeout": "2s",
            "success_threshold": 2,
            "max_reset_timeout": "4s",
        },
        "gate": {
            "enabled": True,
            "listen": "127.0.0.1:0",
            "upstream": cdp.base_url,
            "max_concurrent_creates": settings.max_concurrent_creates,
            "create_rate": settings.create_rate,
            "when_open": settings.when_open,
            "hold_max": f"{settings.hold_max}s",
            # Short: a request queued behind the cap must not slip in after the breaker
            # opened; it is refused with Retry-After instead.
            "queue_wait": "1s",
            "upstream_timeout": "60s",
        },
        "reconcile": {
            "enabled": True,
            "interval": "2s",
            "min_age": "3s",
            "emergency_min_age": "2s",
            "settle_delay": "500ms",
            "cdp_auto_delete": f"{settings.auto_delete}s",
            "ledger_grace": "2s",
            "high_watermark": settings.high_watermark,
            "max_deletes_per_run": 100,
            "census_interval": "2s",
            "list_spacing": "1s",
        },
        "control": {"listen": "127.0.0.1:0", "token": secrets.token_hex(16)},
        "state_dir": str(state_dir),
    }


# -- what a run reports ------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something worth a sentence; `t` is seconds since the run's load started."""

    t: float
    run: str  # "without" | "with"
    kind: str
    text: str


@dataclass(frozen=True)
class Tick:
    """One look at the world, every `sample_interval`."""

    t: float
    run: str
    phase: str  # healthy, outage, recovered, draining (load stopped), cleanup
    breaker: str | None  # None without cdp-monitor
    channels: int  # every channel in the guild
    temp: int  # cdp-chat- channels
    leaked: int  # temp channels nobody will ever delete
    ok: int
    refused: int
    failed: int
    pending: int  # client requests not answered yet


@dataclass
class RunResult:
    run: str  # "without" | "with"
    settings: ScenarioSettings
    interrupted: bool = False
    duration: float = 0.0
    requests: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    unfinished: int = 0
    peak_channels: int = 0
    peak_temp_channels: int = 0
    # Temporary channels CDP has not scheduled for deletion: in use, or leaked.
    peak_held_channels: int = 0
    leaked_at_end: int = 0
    channels_at_end: int = 0
    recovery_to_clean: float | None = None  # None: leaks remained at the end
    errors_30013: int = 0  # CDP log lines reporting Discord's 30013
    discord_30013: int = 0  # 30013 answers Discord gave (abandoned attempts included)
    in_use_deleted: int = 0  # CDP found its channel gone mid-conversation
    discord_429: int = 0
    discord_429_monitor_routes: int = 0
    monitor_429: int = 0  # 429s cdp-monitor's own client received
    late_channels: int = 0  # channels created by CDP's abandoned attempts
    cdp_create_timeouts: int = 0
    cdp_max_concurrent_creates: int = 0
    breaker_opened_at: float | None = None
    inflight_at_open: int | None = None  # creates in flight at the gate when it first opened
    # Requests that may leave channels behind: in flight whenever the breaker opened
    # from closed, plus the trial slots of every half-open period.
    exposed_requests: int = 0
    breaker_trips: int = 0
    half_open_periods: int = 0
    reconcile_deleted: int = 0
    reconcile_reasons: dict[str, int] = field(default_factory=dict)
    under_watermark_at: float | None = None
    timeline: list[Tick] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def success_ratio(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    @property
    def with_monitor(self) -> bool:
        return self.run == "with"

    @property
    def held_bound(self) -> int:
        """What cdp-monitor promises for `peak_held_channels`: the requests it lets in at
        once (`max_concurrent_creates`, one channel each) plus whatever the requests
        already in flight whenever the breaker opened can leave behind, which is up to
        CDP's `attempts` channels each (and each half-open period lets a trial or a few in)."""
        s = self.settings
        return s.prefill + s.max_concurrent_creates + s.attempts * self.exposed_requests


@dataclass
class IncidentReport:
    settings: ScenarioSettings
    without: RunResult | None = None
    with_monitor: RunResult | None = None

    @property
    def runs(self) -> list[RunResult]:
        return [r for r in (self.without, self.with_monitor) if r is not None]


EventSink = Callable[[Event], None]
TickSink = Callable[[Tick], None]


# -- the load generator -------------------------------------------------------------------


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ScenarioError(
            "the scenario's clients use the openai package, which is not installed; "
            "install the test extra (pip install -e '.[test]') or `pip install openai`"
        ) from exc
    return openai


class LoadGenerator:
    """Clients sending chat requests at a steady rate with the real openai SDK.

    Every request is one conversation; the SDK retries it (`max_retries`) on 5xx and
    honours `Retry-After`, as deployed clients do. The schedule is seeded.
    """

    def __init__(self, base_url: str, settings: ScenarioSettings) -> None:
        openai = _import_openai()
        self._openai = openai
        self._settings = settings
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="sk-scenario",
            max_retries=settings.client_retries,
            timeout=settings.client_timeout,
        )
        self._rng = random.Random(settings.seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.ok = 0
        self.refused = 0
        self.failed = 0
        self.unfinished = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set: one request every 1/rate s, jittered ±50%."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            self.sent += 1
            task = asyncio.create_task(self._one(self.sent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            due += self._rng.uniform(0.5, 1.5) / self._settings.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))

    async def _one(self, n: int) -> None:
        openai = self._openai
        try:
            await self._client.chat.completions.create(
                model="coze",
                messages=[{"role": "user", "content": f"question number {n}"}],
            )
        except openai.APIStatusError as exc:
            code = getattr(exc, "code", None)
            if exc.status_code == 503 and code in REFUSAL_CODES:
                self.refused += 1
            else:
                self.failed += 1
        except openai.APIError:  # connection errors and timeouts
            self.failed += 1
        else:
            self.ok += 1

    async def drain(self, timeout: float) -> None:
        """Wait for the requests still out; cancel (and count) what is left after `timeout`."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.cancel()

    async def cancel(self) -> None:
        left = list(self._tasks)
        self.unfinished += len(left)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def close(self) -> None:
        await self.cancel()
        await self._client.close()


# -- one run ------------------------------------------------------------------------------


def _counter_by_label(counter: Any, label: str) -> dict[str, float]:
    """Sum a prometheus Counter's `_total` samples by one label."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Run:
    """The state of one run: its servers, its load, its sampler and what they saw."""

    def __init__(
        self,
        settings: ScenarioSettings,
        *,
        with_monitor: bool,
        workdir: Path,
        on_event: EventSink | None,
        on_tick: TickSink | None,
        stop: asyncio.Event,
        logger: logging.Logger,
    ) -> None:
        self.s = settings
        self.name = "with" if with_monitor else "without"
        self.with_monitor = with_monitor
        self.workdir = workdir
        self._on_event = on_event
        self._on_tick = on_tick
        self._stop = stop
        self._log = logger
        self.result = RunResult(run=self.name, settings=settings)
        self.sim: DiscordSimulator | None = None
        self.cdp: CdpEmulator | None = None
        self.daemon: Daemon | None = None
        self.load: LoadGenerator | None = None
        self._daemon_stop = asyncio.Event()
        self._daemon_task: asyncio.Task[None] | None = None
        self.phase = "healthy"
        self._t0 = 0.0
        self._loop = asyncio.get_running_loop()
        self._seeded: set[int] = set()
        self._seen_late = 0
        self._late_reported_at = -math.inf
        self._late_unreported = 0
        self._deleted_seen = 0
        self._last_run_id: str | None = None
        self._told: set[str] = set()
        self._recovered_at: float | None = None
        self._last_leak_at: float | None = None  # last sample with leaked > 0

    # -- helpers --------------------------------------------------------------------

    def now(self) -> float:
        return self._loop.time() - self._t0

    def emit(self, kind: str, text: str) -> None:
        event = Event(round(self.now(), 2), self.name, kind, text)
        self.result.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def once(self, key: str, kind: str, text: str) -> None:
        if key not in self._told:
            self._told.add(key)
            self.emit(kind, text)

    async def sleep_until(self, t: float) -> bool:
        """Sleep until `t` (run time); False if the stop event came first."""
        wait = t - self.now()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
        return not self._stop.is_set()

    # -- world ----------------------------------------------------------------------

    async def start_world(self, http: aiohttp.ClientSession) -> None:
        s = self.s
        self.sim = DiscordSimulator(SimSettings(channel_limit=s.channel_limit, seed=s.seed))
        await self.sim.start("127.0.0.1", 0)
        cdp_log = self.workdir / "cdp.log"
        cdp_log.touch()
        self.cdp = CdpEmulator(
            CdpSettings(
                discord_api_base=self.sim.api_base,
                guild_id=self.sim.settings.guild_id,
                token=self.sim.settings.token,
                attempt_timeout=s.attempt_timeout,
                attempts=s.attempts,
                reply_delay=s.reply_delay,
                auto_delete=s.auto_delete,
                log_path=cdp_log,
                seed=s.seed,
            )
        )
        await self.cdp.start("127.0.0.1", 0)
        if s.prefill:
            await self._seed(http)

    async def _seed(self, http: aiohttp.ClientSession) -> None:
        assert self.sim is not None
        url = f"{self.sim.admin_url}/guilds/{self.sim.settings.guild_id}/channels"
        body = {"count": self.s.prefill, "prefix": CHANNEL_PREFIX, "age_seconds": 3600}
        async with http.post(url, json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise ScenarioError(f"seeding leaked channels failed: {data}")
        self._seeded = {int(cid) for cid in data["channels"]}

    async def start_daemon(self) -> str:
        assert self.sim is not None and self.cdp is not None
        state_dir = self.workdir / "state"
        config = parse_config(
            yaml.safe_dump(
                daemon_config_dict(
                    self.s,
                    self.sim,
                    self.cdp,
                    state_dir=state_dir,
                    cdp_log=self.workdir / "cdp.log",
                )
            )
        )
        daemon = Daemon(
            config, registry=CollectorRegistry(), logger=self._log, process_metrics=False
        )
        self.daemon = daemon
        daemon.breaker.listeners.append(self._on_transition)
        task = self._daemon_task = asyncio.create_task(daemon.run(self._daemon_stop))
        deadline = self._loop.time() + 15.0
        while not (daemon.gate_url is not None and daemon.ready()):
            if task.done():
                task.result()  # its error, if it failed
                raise ScenarioError("the daemon stopped before it was ready")
            if self._loop.time() > deadline:
                raise ScenarioError("the daemon was not ready within 15 s")
            await asyncio.sleep(0.05)
        return daemon.gate_url

    async def stop_world(self) -> None:
        """Tear down in reverse order; a failure here is logged, never masks the run's."""
        try:
            if self.load is not None:
                await asyncio.wait_for(self.load.close(), 10)
            if self._daemon_task is not None:
                self._daemon_stop.set()
                await asyncio.wait_for(self._daemon_task, 10)
        except Exception:
            _LOG.exception("scenario: stopping the clients or the daemon failed")
        if self.cdp is not None:
            await self.cdp.stop()
        if self.sim is not None:
            await self.sim.stop()

    # -- observation ----------------------------------------------------------------

    def _on_transition(self, old: str, new: str, reason: str, now: float) -> None:
        r = self.result
        t = self.now()
        inflight = 0
        gate = self.daemon.gate if self.daemon is not None else None
        if gate is not None:
            st = gate.status()
            # Queued requests count: they were admitted before it opened.
            inflight = int(st["inflight"].get("create", 0)) + int(st["waiting"])
        if new == "open":
            r.breaker_trips += 1
        if new == "open" and old == "closed":
            r.exposed_requests += inflight
        elif new == "half_open" and self.daemon is not None:
            r.exposed_requests += self.daemon.breaker.settings.half_open_max_trials
        if new == "open" and r.breaker_opened_at is None:
            r.breaker_opened_at = round(t, 2)
            r.inflight_at_open = inflight
            self.emit(
                "breaker",
                f"cdp-monitor: breaker OPEN: {reason}. "
                f"{_plural(r.inflight_at_open or 0, 'channel-creating request')} had "
                "already been let in (in flight at CDP or queued at the gate); new ones "
                "are refused from now on.",
            )
        elif new == "open":
            self.emit("breaker", f"cdp-monitor: breaker open again: {reason}.")
        elif new == "half_open":
            self.emit(
                "breaker",
                "cdp-monitor: breaker half-open: letting one trial request through to "
                "see whether Discord is back.",
            )
        elif new == "closed":
            self.emit("breaker", f"cdp-monitor: breaker CLOSED ({reason}); creation resumes.")
        else:
            self.emit("breaker", f"cdp-monitor: breaker {new}: {reason}.")

    def _census(self) -> tuple[int, int, int, int]:
        """(channels, temporary, held: not scheduled for deletion by CDP, leaked)."""
        assert self.sim is not None and self.cdp is not None
        guild = self.sim.settings.guild_id
        late = {int(c) for c in self.cdp.stats.late_channel_ids}
        pending = {int(c) for c in self.cdp.snapshot()["pending_delete_channel_ids"]}
        channels = temp = held = leaked = 0
        for c in self.sim.state.channels.values():
            if c.guild_id != guild or c.type in (10, 11, 12):
                continue
            channels += 1
            if c.name.startswith(CHANNEL_PREFIX):
                temp += 1
                held += c.id not in pending
                if c.id in late or c.id in self._seeded:
                    leaked += 1
        return channels, temp, held, leaked

    def sample(self) -> Tick:
        assert self.cdp is not None
        r = self.result
        t = self.now()
        channels, temp, held, leaked = self._census()
        r.peak_channels = max(r.peak_channels, channels)
        r.peak_temp_channels = max(r.peak_temp_channels, temp)
        r.peak_held_channels = max(r.peak_held_channels, held)
        if leaked:
            self._last_leak_at = t
        if self.s.prefill and r.under_watermark_at is None and channels < self.s.watermark_channels:
            r.under_watermark_at = round(t, 2)
            self.emit(
                "watermark",
                f"The guild is back under the high watermark: {channels} channels "
                f"(watermark {self.s.watermark_channels} of {self.s.channel_limit}).",
            )
        self._notice(t)
        load = self.load
        tick = Tick(
            t=round(t, 2),
            run=self.name,
            phase=self.phase,
            breaker=self.daemon.breaker.state if self.daemon is not None else None,
            channels=channels,
            temp=temp,
            leaked=leaked,
            ok=load.ok if load else 0,
            refused=load.refused if load else 0,
            failed=load.failed if load else 0,
            pending=load.pending if load else 0,
        )
        r.timeline.append(tick)
        if self._on_tick is not None:
            self._on_tick(tick)
        return tick

    def _notice(self, t: float) -> None:
        """Sentences for what the counters say happened since the last look."""
        assert self.cdp is not None
        stats = self.cdp.stats
        if stats.create_timeouts:
            self.once(
                "timeout",
                "cdp",
                f'CDP: "Create channel timed out, retrying...1": its attempt gave up after '
                f"{self.s.attempt_timeout:g}s, but the create request is still on its way to "
                "Discord and its channel will appear later with nobody to delete it.",
            )
        new_late = stats.late_channels - self._seen_late
        if new_late > 0:
            self._seen_late = stats.late_channels
            self._late_unreported += new_late
        if self._late_unreported and t - self._late_reported_at >= 4.0:
            self._late_reported_at = t
            self.emit(
                "leak",
                f"{_plural(self._late_unreported, 'channel')} appeared from abandoned create "
                f"attempts ({stats.late_channels} so far): leaked, no delete timer.",
            )
            self._late_unreported = 0
        if self.cdp.log_lines and "full" not in self._told:
            if any("30013" in line for line in self.cdp.log_lines):
                self.once(
                    "full",
                    "full",
                    "Discord answers 30013 (Maximum number of guild channels reached): "
                    "the guild is full and every new chat request through CDP now fails.",
                )
        if self.daemon is None:
            return
        gate = self.daemon.gate
        if gate is not None:
            decisions = gate.status()["decisions"]
            if decisions.get("refused_unstable"):
                self.once(
                    "refusing",
                    "gate",
                    "cdp-monitor: creation paused: the gate answers new chat requests "
                    "with 503 and Retry-After instead of passing them to CDP; requests "
                    "that reuse a channel and /v1/models still pass.",
                )
        reconciler = self.daemon.reconciler
        report = reconciler.last_report if reconciler is not None else None
        if report is None or report.run_id == self._last_run_id:
            return
        # One sentence per finished run that deleted something (the metric also counts
        # what runs finished between two looks deleted).
        self._last_run_id = report.run_id
        by_reason = _counter_by_label(self.daemon.metrics.channels_deleted, "reason")
        deleted = int(sum(by_reason.values()))
        if deleted <= self._deleted_seen:
            return
        n, self._deleted_seen = deleted - self._deleted_seen, deleted
        why = {
            "ledger_failed": "their request had failed",
            "ledger_completed": "their request had finished long ago",
            "empty_aged": "empty and old enough",
            "stale": "inactive too long",
        }
        reasons = "; ".join(f"{int(v)} {why.get(k, k)}" for k, v in sorted(by_reason.items()) if v)
        trigger = (
            "an emergency run (guild above the high watermark)"
            if report.emergency
            else (f"a {report.trigger} run")
        )
        self.emit(
            "reconcile",
            f"cdp-monitor: {trigger} deleted {_plural(n, 'leaked channel')} "
            f"({deleted} so far: {reasons}).",
        )

    async def sampler(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.s.sample_interval)

    def settled(self) -> bool:
        """CDP has nothing in flight and no delete pending: nothing will change by itself."""
        assert self.cdp is not None
        snap = self.cdp.snapshot()
        return bool(
            snap["requests_in_flight"] == 0
            and snap["creates_in_flight"] == 0
            and snap["pending_delete_timers"] == 0
        )

    # -- the timeline ---------------------------------------------------------------

    async def timeline(self, http: aiohttp.ClientSession) -> None:
        s = self.s
        assert self.sim is not None and self.load is not None
        load_stop = asyncio.Event()
        load_task = asyncio.create_task(self.load.run(load_stop))
        try:
            if not await self.sleep_until(s.healthy):
                return
            async with http.put(self.sim.admin_url + "/faults", json=outage_faults(s)) as resp:
                resp.raise_for_status()
            self.phase = "outage"
            self.emit(
                "outage",
                f"Discord becomes unstable: {OUTAGE_KINDS[s.outage_kind]}. Creating a channel "
                f"now takes about {s.create_latency:g}s; CDP gives up on an attempt after "
                f"{s.attempt_timeout:g}s and tries again ({s.attempts} attempts).",
            )
            if not await self.sleep_until(s.recovery_at):
                return
            async with http.delete(self.sim.admin_url + "/faults") as resp:
                resp.raise_for_status()
            self.phase = "recovered"
            self._recovered_at = self.now()
            self.emit("recovery", "Discord recovers: every fault is cleared.")
            if not await self.sleep_until(s.load_until):
                return
        finally:
            load_stop.set()
            await load_task
        self.phase = "draining"
        self.emit(
            "drain", "The clients stop sending; waiting for the requests still out to finish."
        )
        drain = asyncio.create_task(self.load.drain(s.client_timeout))
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({drain, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not drain.done():
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            return
        self.phase = "cleanup"
        await self._wait_for_rest()

    async def _wait_for_rest(self) -> None:
        """Until CDP is idle and (with cdp-monitor) the guild clean, at most `tail` s."""
        deadline = self.now() + self.s.tail
        quiet_since: float | None = None
        while self.now() < deadline and not self._stop.is_set():
            tick = self.sample()
            if self.settled():
                quiet_since = quiet_since if quiet_since is not None else tick.t
                # Without cdp-monitor nothing will ever clean up: a settled CDP is the end.
                clean = tick.leaked == 0 or not self.with_monitor
                if clean and tick.t - quiet_since >= 1.0:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(self.s.sample_interval)

    # -- the result -----------------------------------------------------------------

    def finish(self) -> RunResult:
        r = self.result
        r.duration = round(self.now(), 2)
        if self.sim is None or self.cdp is None:
            return r
        tick = self.sample()
        pending = set(self.cdp.snapshot()["pending_delete_channel_ids"])
        guild = self.sim.settings.guild_id
        r.channels_at_end = tick.channels
        # Leaked at the end: a temporary channel that no request in flight owns and CDP
        # will not delete. Once CDP is idle, that is every one without a delete timer.
        if self.cdp.stats.requests_in_flight == 0:
            r.leaked_at_end = sum(
                1
                for c in self.sim.state.channels.values()
                if c.guild_id == guild
                and c.name.startswith(CHANNEL_PREFIX)
                and str(c.id) not in pending
            )
        else:
            r.leaked_at_end = tick.leaked
        if r.leaked_at_end == 0 and self._recovered_at is not None:
            last = self._last_leak_at
            r.recovery_to_clean = (
                0.0
                if last is None or last < self._recovered_at
                else round(last + self.s.sample_interval - self._recovered_at, 1)
            )
        if self.load is not None:
            r.requests = self.load.sent
            r.ok, r.refused, r.failed = self.load.ok, self.load.refused, self.load.failed
            r.unfinished = self.load.unfinished
        lines = list(self.cdp.log_lines)
        r.errors_30013 = sum(1 for line in lines if "30013" in line)
        r.in_use_deleted = sum(
            1 for line in lines if "send message error" in line and "10003" in line
        )
        state = self.sim.state
        r.discord_30013 = state.requests.get((CREATE_ROUTE, 400), 0)
        r.discord_429 = sum(n for (_, status), n in state.requests.items() if status == 429)
        r.discord_429_monitor_routes = sum(
            n
            for (route, status), n in state.requests.items()
            if status == 429 and route in MONITOR_ROUTES
        )
        r.late_channels = self.cdp.stats.late_channels
        r.cdp_create_timeouts = self.cdp.stats.create_timeouts
        r.cdp_max_concurrent_creates = self.cdp.stats.max_concurrent_creates
        if self.daemon is not None:
            limited = _counter_by_label(self.daemon.metrics.discord_ratelimited, "scope")
            r.monitor_429 = int(sum(limited.values()))
            by_reason = _counter_by_label(self.daemon.metrics.channels_deleted, "reason")
            r.reconcile_reasons = {k: int(v) for k, v in sorted(by_reason.items()) if v}
            r.reconcile_deleted = sum(r.reconcile_reasons.values())
            transitions = _counter_by_label(self.daemon.metrics.breaker_transitions, "to")
            r.half_open_periods = int(transitions.get("half_open", 0))
        return r

    async def execute(self) -> RunResult:
        async with aiohttp.ClientSession() as http:
            try:
                await self.start_world(http)
                assert self.cdp is not None
                base = self.cdp.base_url
                if self.with_monitor:
                    base = await self.start_daemon()
                self.load = LoadGenerator(base + "/v1", self.s)
                self._t0 = self._loop.time()
                sampler = asyncio.create_task(self.sampler())
                try:
                    await self.timeline(http)
                finally:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                self.result.interrupted = self._stop.is_set()
                return self.finish()
            finally:
                await self.stop_world()


async def run_once(
    settings: ScenarioSettings,
    *,
    with_monitor: bool,
    workdir: Path | None = None,
    on_event: EventSink | None = None,
    on_tick: TickSink | None = None,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | None = None,
) -> RunResult:
    """One run of the scenario, with or without cdp-monitor in front of CDP.

    `stop` ends it early (the result says `interrupted`); `logger` receives the
    daemon's log (default: the `monitor.sim.scenario.daemon` logger).
    """
    _import_openai()  # fail before starting anything
    stop = stop or asyncio.Event()
    logger = logger or logging.getLogger("monitor.sim.scenario.daemon")
    with _workdir(workdir) as base:
        run_dir = base / ("with" if with_monitor else "without")
        run_dir.mkdir(parents=True, exist_ok=True)
        run = _Run(
            settings,
            with_monitor=with_monitor,
            workdir=run_dir,
            on_event=on_event,
            on_tick=on_tick,
            stop=stop,
            logger=logger,
        )
        return await run.execute()


async def run_incident(
    settings: ScenarioSettings,
    *,
    workdir: Path | None = None,
    on_event: EventSink | None = None,
    on_tick: TickSink | None = None,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | None = None,
) -> IncidentReport:
    """Both runs, same settings and seed: without cdp-monitor, then with it."""
    stop = stop or asyncio.Event()
    report = IncidentReport(settings)
    with _workdir(workdir) as base:
        for with_monitor in (False, True):
            if stop.is_set():
                break
            result = await run_once(
                settings,
                with_monitor=with_monitor,
                workdir=base,
                on_event=on_event,
                on_tick=on_tick,
                stop=stop,
                logger=logger,
            )
            if with_monitor:
                report.with_monitor = result
            else:
                report.without = result
    return report


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="cdp-monitor-scenario-") as tmp:
        yield Path(tmp)


# -- the summary table ----------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


def summary_rows(report: IncidentReport, *, detail: bool = False) -> list[tuple[str, list[str]]]:
    """(label, one cell per run) rows of the side-by-side summary; `detail` adds the
    numbers behind them (the benchmark prints those too)."""
    s = report.settings

    def cells(fn: Callable[[RunResult], str]) -> list[str]:
        return [fn(r) for r in report.runs]

    def monitor_only(fn: Callable[[RunResult], str]) -> list[str]:
        return cells(lambda r: fn(r) if r.with_monitor else "-")

    rows: list[tuple[str, list[str]]] = []
    if s.prefill:
        rows += [
            ("peak channels in the guild", cells(lambda r: f"{r.peak_channels}/{s.channel_limit}")),
            (
                f"under the watermark ({s.watermark_channels}) at",
                cells(lambda r: _seconds(r.under_watermark_at)),
            ),
        ]
    rows += [
        ("peak temporary channels", cells(lambda r: str(r.peak_temp_channels))),
        ("channels left leaked at the end", cells(lambda r: str(r.leaked_at_end))),
        ("recovery -> no leaked channel", cells(lambda r: _seconds(r.recovery_to_clean))),
        ("30013 errors (guild full)", cells(lambda r: str(r.errors_30013))),
        ("client success ratio", cells(lambda r: f"{r.success_ratio:.0%}")),
        (
            "  requests ok / refused / failed",
            cells(lambda r: f"{r.ok} / {r.refused} / {r.failed + r.unfinished}"),
        ),
        ("429s from Discord", cells(lambda r: str(r.discord_429))),
        ("  answered to cdp-monitor's requests", monitor_only(lambda r: str(r.monitor_429))),
    ]
    if detail:
        rows += [
            ("channels from abandoned attempts", cells(lambda r: str(r.late_channels))),
            (
                "breaker opened, s into the outage",
                monitor_only(
                    lambda r: (
                        "never"
                        if r.breaker_opened_at is None
                        else f"{r.breaker_opened_at - s.healthy:.1f}"
                    )
                ),
            ),
            ("  creates let in when it opened", monitor_only(lambda r: str(r.inflight_at_open))),
            (
                "peak held channels (bound)",
                monitor_only(lambda r: f"{r.peak_held_channels} ({r.held_bound})"),
            ),
            ("channels deleted by reconcile", monitor_only(lambda r: str(r.reconcile_deleted))),
            ("conversations that lost a channel", cells(lambda r: str(r.in_use_deleted))),
            ("run time (s)", cells(lambda r: f"{r.duration:.1f}")),
        ]
    return rows


def format_summary(report: IncidentReport, *, detail: bool = False) -> str:
    """The side-by-side table of the runs in `report`."""
    headers = [
        "without cdp-monitor" if r.run == "without" else "with cdp-monitor" for r in report.runs
    ]
    rows = summary_rows(report, detail=detail)
    label_w = max(len(label) for label, _ in rows)
    col_w = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers)]
    lines = [
        "".ljust(label_w) + "".join(f"  {h:>{w}}" for h, w in zip(headers, col_w, strict=True))
    ]
    lines.append("-" * len(lines[0]))
    for label, cells in rows:
        lines.append(
            label.ljust(label_w) + "".join(f"  {c:>{w}}" for c, w in zip(cells, col_w, strict=True))
        )
    return "\n".join(lines)


def describe(settings: ScenarioSettings) -> str:
    """One paragraph saying what the scenario does, for the demo and the benchmark."""
    s = settings
    text = (
        f"Clients send {s.rate:g} chat requests/s through CDP (each creates a temporary "
        f"`{CHANNEL_PREFIX}` channel; the SDK retries failures {s.client_retries}x). "
        f"After {s.healthy:g}s Discord is unstable for {s.outage:g}s ({s.outage_kind}: "
        f"{OUTAGE_KINDS[s.outage_kind]}), then recovers; the clients go on for {s.after:g}s."
    )
    if s.prefill:
        text += (
            f" Before it starts, {s.prefill} old leaked channels already fill the guild "
            f"({s.prefill / s.channel_limit:.0%} of its {s.channel_limit}-channel limit)."
        )
    return text


__all__ = [
    "MONITOR_ROUTES",
    "OUTAGE_KINDS",
    "SCENARIOS",
    "Event",
    "IncidentReport",
    "LoadGenerator",
    "RunResult",
    "ScenarioError",
    "ScenarioSettings",
    "Tick",
    "daemon_config_dict",
    "describe",
    "format_summary",
    "outage_faults",
    "prefill_settings",
    "run_incident",
    "run_once",
    "summary_rows",
]
