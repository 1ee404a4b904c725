"""Watching one run: a census of the guild every sample interval (a `Tick`), the events
the counters of the simulator, the emulator and the daemon show, and at the end the
`RunResult`. The numbers come from the simulator and the emulator themselves (channels
in the guild, Discord's answers, CDP's log); the daemon is read only for what it did."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from monitor.demo.events import (
    BreakerChanged,
    CdpTrouble,
    ChannelsLeaked,
    CreateErrored,
    CreateTimedOut,
    Event,
    GateRefusing,
    GuildFull,
    LimitLowered,
    ReconcileDeleted,
    Tick,
    UnderWatermark,
)
from monitor.demo.load import LoadGenerator
from monitor.demo.observe import DaemonView
from monitor.demo.results import RunResult, breaker_open_for
from monitor.demo.settings import CREATE_ROUTE, ScenarioSettings
from monitor.sim.cdp import CdpEmulator

# Discord's 30013 as CDP logs it; not a bare "30013", which CDP's request ids (a
# timestamp and nanoseconds) contain now and then.
from monitor.sim.cdp.settings import FULL_GUILD_TEXT
from monitor.sim.discord import DiscordSimulator
from monitor.sim.discord.models import THREAD_TYPES
from monitor.vocab import CHANNEL_PREFIX

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
# CDP's line for each timed-out create attempt (discord/channel.go:158).
RETRYING = "Create channel timed out, retrying..."
# CDP's routes that create a channel for the request (the load sends chat completions).
CREATE_PATHS = frozenset({"/v1/chat/completions", "/v1/images/generations"})
LEAK_EVENT_EVERY = 4.0  # seconds: new leaks are told together, at most this often


class Watcher:
    """What one run saw: its result, filled as it goes, and its events."""

    def __init__(
        self,
        settings: ScenarioSettings,
        result: RunResult,
        *,
        sim: DiscordSimulator,
        cdp: CdpEmulator,
        now: Callable[[], float],
        emit: Callable[[Event], None],
        on_tick: Callable[[Tick], None] | None = None,
    ) -> None:
        self.s = settings
        self.result = result
        self.sim = sim
        self.cdp = cdp
        self.now = now
        self._emit = emit
        self._on_tick = on_tick
        self.daemon: DaemonView | None = None
        self.load: LoadGenerator | None = None
        self.phase = "healthy"
        self.seeded: set[int] = set()
        self.recovered_at: float | None = None
        self._seen_late = 0
        self._late_reported_at = -math.inf
        self._late_unreported = 0
        self._deleted_seen = 0
        self._last_run_id: str | None = None
        self._told: set[str] = set()
        self._last_leak_at: float | None = None  # last sample with leaked > 0

    def stamp(self) -> dict[str, Any]:
        """The fields every event of this run starts with."""
        return {"t": round(self.now(), 2), "run": self.result.run}

    def _once(self, key: str, event: Event) -> None:
        if key not in self._told:
            self._told.add(key)
            self._emit(event)

    # -- the breaker ----------------------------------------------------------------

    def on_transition(self, old: str, new: str, reason: str, now: float) -> None:
        r = self.result
        t = self.now()
        inflight = self.daemon.creates_let_in() if self.daemon is not None else 0
        if new == "open":
            r.breaker_trips += 1
        if new == "open" and old == "closed":
            r.exposed_requests += inflight
        elif new == "half_open" and self.daemon is not None:
            r.exposed_requests += self.daemon.half_open_trials()
        first_open = new == "open" and r.breaker_opened_at is None
        if first_open:
            r.breaker_opened_at = round(t, 2)
            r.inflight_at_open = inflight
        event = BreakerChanged(
            **self.stamp(),
            old=old,
            new=new,
            reason=reason,
            first_open=first_open,
            inflight=inflight,
        )
        self._emit(event)

    # -- sampling -------------------------------------------------------------------

    def census(self) -> tuple[int, int, int, int]:
        """(channels, temporary, held: not scheduled for deletion by CDP, leaked)."""
        guild = self.sim.settings.guild_id
        late = {int(c) for c in self.cdp.stats.late_channel_ids}
        pending = {int(c) for c in self.cdp.snapshot()["pending_delete_channel_ids"]}
        channels = temp = held = leaked = 0
        for c in self.sim.state.channels.values():
            if c.guild_id != guild or c.type in THREAD_TYPES:
                continue
            channels += 1
            if c.name.startswith(CHANNEL_PREFIX):
                temp += 1
                held += c.id not in pending
                if c.id in late or c.id in self.seeded:
                    leaked += 1
        return channels, temp, held, leaked

    def sample(self) -> Tick:
        r = self.result
        t = self.now()
        channels, temp, held, leaked = self.census()
        r.peak_channels = max(r.peak_channels, channels)
        r.peak_temp_channels = max(r.peak_temp_channels, temp)
        r.peak_held_channels = max(r.peak_held_channels, held)
        if leaked:
            self._last_leak_at = t
        if self.s.prefill and r.under_watermark_at is None and channels < self.s.watermark_channels:
            r.under_watermark_at = round(t, 2)
            self._emit(
                UnderWatermark(
                    **self.stamp(),
                    channels=channels,
                    watermark=self.s.watermark_channels,
                    limit=self.s.channel_limit,
                )
            )
        self._notice_cdp(t)
        self._notice_monitor()
        load = self.load
        tick = Tick(
            t=round(t, 2),
            run=r.run,
            phase=self.phase,
            breaker=self.daemon.breaker_state() if self.daemon is not None else None,
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

    def settled(self) -> bool:
        """CDP has nothing in flight and no delete pending: nothing will change by itself."""
        snap = self.cdp.snapshot()
        return bool(
            snap["requests_in_flight"] == 0
            and snap["creates_in_flight"] == 0
            and snap["pending_delete_timers"] == 0
            and snap["goroutines"] == 0  # abandoned creates still queued
        )

    # -- events from the counters -----------------------------------------------------

    def _notice_cdp(self, t: float) -> None:
        """What CDP's counters and log say happened since the last look."""
        stats = self.cdp.stats
        if stats.create_timeouts:
            self._once(
                "timeout", CreateTimedOut(**self.stamp(), attempt_timeout=self.s.attempt_timeout)
            )
        new_late = stats.late_channels - self._seen_late
        if new_late > 0:
            self._seen_late = stats.late_channels
            self._late_unreported += new_late
        if self._late_unreported and t - self._late_reported_at >= LEAK_EVENT_EVERY:
            self._late_reported_at = t
            self._emit(
                ChannelsLeaked(
                    **self.stamp(), count=self._late_unreported, total=stats.late_channels
                )
            )
            self._late_unreported = 0
        self._notice_cdp_log()

    def _notice_cdp_log(self) -> None:
        """First-time events read from CDP's log lines."""
        log = self.cdp.log_lines
        if "full" not in self._told and any(FULL_GUILD_TEXT in line for line in log):
            self._once("full", GuildFull(**self.stamp()))
        if "errored" not in self._told and any("Client.Timeout" in line for line in log):
            self._once("errored", CreateErrored(**self.stamp(), http_timeout=self.s.http_timeout))
        if "tokens" not in self._told and any("无可用的 user_auth" in line for line in log):
            self._once("tokens", CdpTrouble(**self.stamp(), message="no_available_user_auth"))

    def _notice_monitor(self) -> None:
        """What the daemon did since the last look: the gate refusing, reconcile runs."""
        if self.daemon is None:
            return
        if self.daemon.gate_refused_unstable():
            self._once("refusing", GateRefusing(**self.stamp()))
        limit = self.daemon.create_limit()
        if limit.get("active") and limit.get("limit", self.s.max_concurrent_creates) < (
            self.s.max_concurrent_creates
        ):
            self._once(
                "limit",
                LimitLowered(
                    **self.stamp(),
                    limit=int(limit["limit"]),
                    per_create=float(limit["per_create"]),
                    budget=float(limit["budget"]),
                ),
            )
        report = self.daemon.last_reconcile()
        if report is None or report.run_id == self._last_run_id:
            return
        # One event per finished run that deleted something (the metric also counts
        # what runs finished between two looks deleted).
        self._last_run_id = report.run_id
        by_reason = self.daemon.deleted_by_reason()
        deleted = sum(by_reason.values())
        if deleted <= self._deleted_seen:
            return
        n, self._deleted_seen = deleted - self._deleted_seen, deleted
        self._emit(
            ReconcileDeleted(
                **self.stamp(),
                count=n,
                total=deleted,
                by_reason=by_reason,
                trigger=report.trigger,
                emergency=report.emergency,
            )
        )

    # -- the result -----------------------------------------------------------------

    def finish(self) -> RunResult:
        r = self.result
        r.duration = round(self.now(), 2)
        tick = self.sample()
        r.channels_at_end = tick.channels
        r.leaked_at_end = self._leaked_at_end(tick)
        if r.leaked_at_end == 0 and self.recovered_at is not None:
            last = self._last_leak_at
            r.recovery_to_clean = (
                0.0
                if last is None or last < self.recovered_at
                else round(last + self.s.sample_interval - self.recovered_at, 1)
            )
        if self.load is not None:
            r.requests = self.load.sent
            r.ok, r.refused, r.failed = self.load.ok, self.load.refused, self.load.failed
            r.unfinished = self.load.unfinished
        self._count_discord_and_cdp()
        if self.daemon is not None:
            r.monitor_429 = self.daemon.ratelimited_total()
            r.reconcile_reasons = self.daemon.deleted_by_reason()
            r.reconcile_deleted = sum(r.reconcile_reasons.values())
            r.half_open_periods = self.daemon.transitions_to("half_open")
            r.breaker_open_for = breaker_open_for(r.events, r.duration)
            r.limited = self.daemon.gate_decisions().get("limited", 0)
        return r

    def _leaked_at_end(self, tick: Tick) -> int:
        """A temporary channel that no request in flight owns and CDP will not delete.
        Once CDP is idle, that is every one without a delete timer."""
        if self.cdp.stats.requests_in_flight != 0:
            return tick.leaked
        pending = set(self.cdp.snapshot()["pending_delete_channel_ids"])
        guild = self.sim.settings.guild_id
        return sum(
            1
            for c in self.sim.state.channels.values()
            if c.guild_id == guild
            and c.name.startswith(CHANNEL_PREFIX)
            and str(c.id) not in pending
        )

    def _count_discord_and_cdp(self) -> None:
        r = self.result
        lines = list(self.cdp.log_lines)
        r.errors_30013 = sum(1 for line in lines if FULL_GUILD_TEXT in line)
        r.retrying_lines = sum(1 for line in lines if RETRYING in line)
        r.creates_at_cdp = sum(
            n for (path, _), n in self.cdp.stats.requests.items() if path in CREATE_PATHS
        )
        r.in_use_deleted = sum(1 for line in lines if "user_auth:" in line and "10003" in line)
        requests = self.sim.state.requests
        r.discord_30013 = requests.get((CREATE_ROUTE, 400), 0)
        r.discord_429 = sum(n for (_, status), n in requests.items() if status == 429)
        r.discord_429_monitor_routes = sum(
            n
            for (route, status), n in requests.items()
            if status == 429 and route in MONITOR_ROUTES
        )
        r.late_channels = self.cdp.stats.late_channels
        r.cdp_create_timeouts = self.cdp.stats.create_timeouts
        r.cdp_max_concurrent_creates = self.cdp.stats.max_concurrent_creates
