"""The reconciler: lists the guild, plans, re-checks each channel just before deleting it,
deletes (concurrently, through the shared budget-pacing REST client) and audits; keeps the
census; decides in `step` when to run.

Every setting is read from the current `reconcile` section at the moment it is used, so
`reconfigure` (a config reload) applies to the next decision, not just the next run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import CdpConfig, ReconcileConfig
from monitor.errors import DiscordError, MonitorError, StateError
from monitor.ledger import LedgerView, RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile.apply import Applier
from monitor.reconcile.census import ChannelsAPI, GuildCensus, LiveChannels
from monitor.reconcile.plan import Census, Plan, plan
from monitor.reconcile.report import (
    ReconcileReport,
    RunState,
    fill_from_plan,
    result_of,
    run_status,
    unjudged_message,
)
from monitor.reconcile.rules import Activity, Inputs
from monitor.reconcile.triggers import next_trigger, restart_due
from monitor.state import StateDir

DEFAULT_CONCURRENCY = 16
# A run right after a census (an emergency) plans from that listing if it is this fresh.
LISTING_REUSE = 5.0

_LOG = logging.getLogger("monitor.reconcile")


class Reconciler:
    """Owns the reconcile runs, the census and the loop. One per guild.

    Concurrency: one run at a time (an asyncio.Lock). A call to `run` made while a run of
    the same mode (dry or not) is in progress joins it and returns its report: it
    reconciles the same guild at the same moment, and a burst of requests must not list
    the guild over and over. A call of the other mode waits for it, then runs. A run
    that removed nothing leaves its listing to the runs of the next `LISTING_REUSE`
    seconds, so requests arriving one after another do not list again either.
    """

    def __init__(
        self,
        settings: ReconcileConfig,
        *,
        guild_id: int,
        channel_limit: int,
        rest: ChannelsAPI,
        ledger: LedgerView | None,
        state_dir: StateDir,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOG,
        concurrency: int = DEFAULT_CONCURRENCY,
        cdp: CdpConfig | None = None,
        activity: Callable[[], Activity] | None = None,
        live: LiveChannels | None = None,
    ) -> None:
        self._settings = settings
        self.cdp = cdp or CdpConfig()
        metrics.cdp_purges_when_full.set(self.cdp.max_channel_del_type is not None)
        self.activity: Callable[[], Activity] = activity or Activity  # asked at each judgement
        self._adopt: float | None = None  # --adopt-older-than, for the run holding the lock
        self._unjudged_reported = False
        self._guild_id = guild_id
        self._guild = str(guild_id)
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._guild_census = GuildCensus(
            guild_id=guild_id,
            channel_limit=channel_limit,
            rest=rest,
            metrics=metrics,
            clock=clock,
            live=live,
        )
        self._applier = Applier(
            guild_id=guild_id,
            rest=rest,
            ledger=ledger,
            inputs=self._inputs,
            state_dir=state_dir,
            metrics=metrics,
            clock=clock,
            log=logger,
            concurrency=concurrency,
        )
        self._lock = asyncio.Lock()
        self._current: tuple[bool, asyncio.Task[ReconcileReport]] | None = None
        self._last_run_at: float | None = None  # when the last run listed the guild
        self._last_run_progress = False
        self._last_report: ReconcileReport | None = None
        self._last_success: float | None = None

    def reconfigure(
        self,
        settings: ReconcileConfig,
        channel_limit: int | None = None,
        cdp: CdpConfig | None = None,
    ) -> None:
        """Take new settings (config reload); every key applies from the next decision."""
        self._settings = settings
        self.cdp = cdp or self.cdp
        self._metrics.cdp_purges_when_full.set(self.cdp.max_channel_del_type is not None)
        if channel_limit is not None:
            self._guild_census.limit = channel_limit

    # -- accessors --------------------------------------------------------------------

    @property
    def settings(self) -> ReconcileConfig:
        return self._settings

    def _inputs(self) -> Inputs:
        activity = replace(self.activity(), adopt_older_than=self._adopt)
        return Inputs(self._settings, self.cdp, activity)

    @property
    def last_census(self) -> Census | None:
        return self._guild_census.last

    @property
    def last_report(self) -> ReconcileReport | None:
        return self._last_report

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` for a run in progress (shutdown: its deletes get their
        audit lines before the HTTP session closes). True if idle."""
        current = self._current
        if current is None or current[1].done():
            return True
        done, _ = await asyncio.wait({current[1]}, timeout=timeout)
        return bool(done)

    def status(self) -> dict[str, Any]:
        """JSON for /status: `channels` (the census) and `reconcile` (runs)."""
        runs = run_status(self._settings, self.running, self._last_success, self._last_report)
        return {"channels": self._guild_census.as_dict(self._clock.time()), "reconcile": runs}

    # -- listing and census -----------------------------------------------------------

    def _ledger_view(self) -> LedgerView | None:
        if isinstance(self._ledger, RequestLedger):
            return self._ledger.snapshot()
        return self._ledger

    async def make_plan(self, *, reuse: float = 0.0) -> Plan:
        """List the guild (one request) and plan; updates the census. A listing younger
        than `reuse` seconds is planned from again instead (the re-check still asks
        Discord about every channel before deleting it)."""
        gc = self._guild_census
        now = self._clock.time()
        channels = gc.recent_listing(now, reuse)
        if channels is None:
            channels = await gc.fetch()
            now = self._clock.time()
        inputs = self._inputs()
        p = plan(
            channels,
            self._ledger_view(),
            inputs.settings,
            now,
            guild_limit=gc.limit,
            guild_id=self._guild_id,
            cdp=inputs.cdp,
            activity=inputs.activity,
        )
        gc.record(p.census)
        return p

    async def census(self, *, max_age: float | None = None) -> Census:
        """The census, listing only if the last one is older than `max_age` (default: the
        census interval) and no listing was tried within the list spacing."""
        gc, s = self._guild_census, self._settings
        now = self._clock.time()
        limit = s.census_interval if max_age is None else max_age
        if gc.last is not None and (
            not gc.older_than(now, limit) or gc.tried_within(now, s.list_spacing)
        ):
            return gc.last
        return (await self.make_plan()).census

    # -- runs -------------------------------------------------------------------------

    def _effective_dry_run(self, dry_run: bool | None) -> tuple[bool, str | None]:
        if not self._settings.enabled:
            return True, "reconcile.enabled is false: dry run only"
        if self._settings.dry_run:
            return True, "reconcile.dry_run is true: dry run only" if dry_run is False else None
        return bool(dry_run), None

    async def run(
        self, *, dry_run: bool | None = None, trigger: str, adopt_older_than: float | None = None
    ) -> ReconcileReport:
        """List, plan, re-check and delete (or, dry, only report and audit). The config's
        `dry_run: true` or `enabled: false` force a dry run whatever is asked.
        `adopt_older_than`: also delete channels with messages no rule can judge, older
        (and idle) that long (`adopted`: the operator confirmed them as leaks)."""
        dry, note = self._effective_dry_run(dry_run)
        current = self._current
        joinable = adopt_older_than is None and current is not None and current[0] == dry
        if joinable and current is not None and not current[1].done():
            return await asyncio.shield(current[1])
        task = asyncio.ensure_future(self._locked(None, dry, trigger, note, adopt_older_than))
        task.add_done_callback(_consume_exception)
        self._current = (dry, task)
        # Shielded: a caller that goes away (an HTTP client hanging up) does not cut a run
        # short between a delete and its audit line.
        return await asyncio.shield(task)

    async def apply(
        self, p: Plan, *, dry_run: bool | None = None, trigger: str = "manual"
    ) -> ReconcileReport:
        """Carry out a plan made earlier by `make_plan` (each action is still re-checked)."""
        dry, note = self._effective_dry_run(dry_run)
        task = asyncio.ensure_future(self._locked(p, dry, trigger, note))
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _locked(
        self,
        given: Plan | None,
        dry: bool,
        trigger: str,
        note: str | None,
        adopt: float | None = None,
    ) -> ReconcileReport:
        async with self._lock:
            self._adopt = adopt
            report = ReconcileReport(
                run_id=uuid.uuid4().hex[:12],
                trigger=trigger,
                dry_run=dry,
                started_at=self._clock.time(),
            )
            if note:
                report.notes.append(note)
            try:
                await self._run(report, given, reuse=LISTING_REUSE if adopt is None else 0.0)
            finally:
                self._adopt = None
                self._finish(report)
            return report

    async def _run(self, report: ReconcileReport, given: Plan | None, *, reuse: float) -> None:
        p = given
        if p is None:
            try:
                p = await self.make_plan(reuse=reuse)
            except (DiscordError, StateError) as exc:
                report.errors.append({"id": None, "name": None, "error": f"listing: {exc}"})
                self._log.error("reconcile %s: cannot list the guild: %s", report.run_id, exc)
                return
        self._last_run_at = p.now
        fill_from_plan(report, p, purges=self.cdp.max_channel_del_type)
        if not self._unjudged_reported and p.unjudged:  # old leaks: once, for the operator
            self._unjudged_reported = True
            self._log.warning("reconcile: %s", unjudged_message(p))
        state = RunState(report)
        if report.dry_run:
            await self._applier.dry_run(state, p)
        else:
            await self._applier.delete_all(state, p)

    def _finish(self, report: ReconcileReport) -> None:
        now = self._clock.time()
        report.finished_at = now
        report.result = result_of(report)
        self._metrics.reconcile_runs.labels(result=report.result).inc()
        if report.result in ("ok", "dry_run"):
            # A dry run is the configured behaviour working, not a stuck reconciler.
            self._last_success = now
            self._metrics.reconcile_last_success.set(now)
        removed = len(report.deleted) + len(report.gone)
        self._last_run_progress = bool(report.deleted)
        self._guild_census.after_run(removed, now)
        if removed and self.last_census is not None:
            report.census = self.last_census.as_dict()
        self._last_report = report
        log = self._log.warning if report.errors else self._log.info
        log(
            "reconcile %s (%s%s): %s; planned %d, deleted %d, gone %d, kept %d, errors %d",
            report.run_id,
            report.trigger,
            ", dry run" if report.dry_run else "",
            report.result,
            len(report.planned),
            len(report.deleted),
            len(report.gone),
            len(report.skipped),
            len(report.errors),
        )

    # -- the loop ---------------------------------------------------------------------

    async def step(self, breaker_state_fn: Callable[[], tuple[str, float]]) -> str | None:
        """One pass of the loop: refresh the census if due, run if a trigger says so.
        Returns the trigger that ran, if any."""
        gc, s = self._guild_census, self._settings
        now = self._clock.time()
        census_due = gc.older_than(now, s.census_interval)
        if census_due and not gc.tried_within(now, s.list_spacing) and not self.running:
            try:
                await self.census(max_age=0.0)
            except MonitorError as exc:
                self._log.warning("reconcile: census failed: %s", exc)
        s = self._settings
        if not s.enabled:
            return None
        state, since = breaker_state_fn()
        now = self._clock.time()
        trigger = next_trigger(
            now,
            breaker_state=state,
            closed_since=since if state == "closed" else None,
            last_run_at=self._last_run_at,
            last_census=gc.last,
            settings=s,
            last_run_progress=self._last_run_progress,
            restart_due=restart_due(
                () if self._ledger is None else self._ledger.restarts, self.cdp.request_lifetime
            ),
            # Dry runs delete nothing, so "progress" never comes: don't repeat them fast.
            emergency_retry=s.interval if s.dry_run else s.list_spacing,
        )
        if trigger is None:
            return None
        if gc.last_failed and gc.tried_within(now, s.list_spacing):
            return None  # Discord just refused the listing: don't hammer the shared bucket
        await self.run(trigger=trigger)
        return trigger

    async def loop(
        self, breaker_state_fn: Callable[[], tuple[str, float]], tick: float = 1.0
    ) -> None:
        """Run forever (the daemon supervises it). `breaker_state_fn` returns the breaker's
        state and since when it has been in it (wall clock)."""
        while True:
            await self.step(breaker_state_fn)
            await self._clock.sleep(tick)


def _consume_exception(task: asyncio.Task[ReconcileReport]) -> None:
    # Callers see the exception; this only keeps a run whose callers all went away from
    # ending as "exception never retrieved" without a trace.
    if not task.cancelled() and task.exception() is not None:
        _LOG.warning("reconcile run failed", exc_info=task.exception())
