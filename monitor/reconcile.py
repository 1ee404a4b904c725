"""The reconciler: find CDP's leaked temporary channels and delete them, safely.

Three layers:

* `plan` (pure): a guild listing + the request ledger + settings + `now` → the channels to
  delete (oldest first, capped), each with its reason, every other temporary channel with
  why it is kept, and the census. A wrong deletion is the worst bug this product can
  have, so the rules are narrow and anything unexpected in the listing is skipped.
* `Reconciler.run`: lists the guild once, plans, then for each action re-fetches the
  channel just before deleting it and re-applies the rules to what Discord says now
  (`recheck`); deletions run concurrently through the shared, budget-pacing REST client.
  Every deletion (and every dry-run decision) is one fsynced line of the audit log.
* `next_trigger` (pure) and `Reconciler.loop`: when to run (interval, after recovery,
  at once above the high watermark, even while the breaker is open).

The rules (DESIGN section 2.6): a candidate is a text channel (type 0) whose name matches
`name_pattern` (`re.match`, from the start) and whose id is not protected. It is deleted
when its ledger request failed (`ledger_failed`), completed longer ago than
`cdp_auto_delete + ledger_grace` (`ledger_completed`), it is empty and older than
`min_age` (`empty_aged`; `emergency_min_age` above the high watermark), or (only with
`stale_after`) its last activity is older than `stale_after` and the channel older than
`min_age` (`stale`). Never while its ledger request is open or completed within the grace
period.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import Config, ReconcileConfig
from monitor.discord.rest import DiscordRestClient
from monitor.discord.snowflake import parse_snowflake, snowflake_time
from monitor.errors import (
    DiscordError,
    DiscordMalformedResponse,
    DiscordNotFound,
    DiscordUnauthorized,
    MonitorError,
    StateError,
)
from monitor.ledger import EMPTY_LEDGER, LedgerEntry, LedgerView, RequestLedger
from monitor.metrics import Metrics
from monitor.state import StateDir
from monitor.units import format_duration
from monitor.vocab import TEMP_CHANNEL_STATES

TEXT_CHANNEL = 0
REASONS = ("ledger_failed", "ledger_completed", "empty_aged", "stale")
DEFAULT_CONCURRENCY = 16
# Listing the guild spends the bucket CDP creates channels with: outside a run, list at
# most this often (seconds), and refresh the census on this interval.
MIN_LIST_SPACING = 30.0
CENSUS_INTERVAL = 60.0
# Exhaustion estimate: growth rate over the last few census points in this window.
GROWTH_POINTS = 10
GROWTH_WINDOW = 1800.0
# A run right after a census (an emergency) plans from that listing if it is this fresh.
LISTING_REUSE = 5.0
REPORT_LIST_LIMIT = 500  # entries per list in as_dict(), so one answer stays readable

_LOG = logging.getLogger("monitor.reconcile")


# -- the plan (pure) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """One planned deletion, with what the listing said (the re-check compares)."""

    channel_id: int
    name: str
    reason: str
    created_at: float
    last_message_id: int | None
    request_id: str | None = None  # from the ledger, when it decided

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.channel_id),
            "name": self.name,
            "reason": self.reason,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Skip:
    """A channel left alone (or a listing entry that could not be understood), and why."""

    channel_id: str | None
    name: str | None
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.channel_id, "name": self.name, "why": self.why}


@dataclass(frozen=True, slots=True)
class Census:
    """How full the guild is and what its temporary channels are doing."""

    at: float
    channels: int  # every listed channel: categories and voice count toward the limit
    limit: int
    high_watermark: float
    active: int = 0  # open ledger request, or recent activity
    empty: int = 0  # no message yet, too young to delete
    stale: int = 0  # messages, but none for long (deleted only with stale_after)
    leaked: int = 0  # the rules would delete it (cap aside)

    @property
    def usage(self) -> float:
        return self.channels / self.limit if self.limit > 0 else 0.0

    @property
    def above_watermark(self) -> bool:
        return above_watermark(self.channels, self.limit, self.high_watermark)

    def temp(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in TEMP_CHANNEL_STATES}

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "channels": self.channels,
            "limit": self.limit,
            "usage": round(self.usage, 4),
            "above_watermark": self.above_watermark,
            "temp": self.temp(),
        }


@dataclass(frozen=True)
class Plan:
    now: float
    emergency: bool  # above the high watermark: emergency_min_age applies
    min_age: float  # the min_age applied to empty channels
    actions: tuple[Action, ...]
    skipped: tuple[Skip, ...]
    deferred: int  # deletable, but past max_deletes_per_run (next run)
    not_matching: int  # listed channels whose name does not match (not listed in skipped)
    census: Census


def above_watermark(channels: int, limit: int, high_watermark: float) -> bool:
    return limit > 0 and channels >= high_watermark * limit


@dataclass(frozen=True, slots=True)
class _Facts:
    """A listing entry understood well enough to judge."""

    id: int
    name: str
    type: int
    raw: Mapping[str, Any]


def _parse(raw: Any, guild_id: int | None) -> _Facts | Skip:
    if not isinstance(raw, Mapping):
        return Skip(None, None, f"listing entry is not an object ({type(raw).__name__})")
    cid = parse_snowflake(raw.get("id"))
    if cid is None:
        shown = raw.get("id")
        return Skip(None, _str_or_none(raw.get("name")), f"missing or invalid id {shown!r}")
    name = raw.get("name")
    if not isinstance(name, str):
        return Skip(str(cid), None, f"name is not a string ({type(name).__name__})")
    type_ = raw.get("type")
    if isinstance(type_, bool) or not isinstance(type_, int):
        return Skip(str(cid), name, f"unknown channel type {type_!r}")
    if guild_id is not None and "guild_id" in raw and parse_snowflake(raw["guild_id"]) != guild_id:
        return Skip(str(cid), name, f"belongs to another guild ({raw['guild_id']!r})")
    return _Facts(cid, name, type_, raw)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ago(seconds: float) -> str:
    return format_duration(max(0.0, round(seconds, 3)))


@dataclass(frozen=True, slots=True)
class _Verdict:
    reason: str | None  # a delete reason, or None: keep it
    why: str  # why it is kept ("" when deleted)
    state: str  # census state: active, empty, stale, leaked
    last_message_id: int | None = None
    request_id: str | None = None


def _judge(
    f: _Facts,
    ledger: LedgerView,
    settings: ReconcileConfig,
    regex: re.Pattern[str],
    now: float,
    min_age: float,
) -> _Verdict | Skip | None:
    """None: not a temporary channel at all (name does not match)."""
    if not regex.match(f.name):
        return None
    if f.type != TEXT_CHANNEL:
        return Skip(str(f.id), f.name, f"type {f.type} is not a text channel")
    if f.id in settings.protected_channel_ids:
        return Skip(str(f.id), f.name, "protected id")
    if "last_message_id" not in f.raw:
        # A text channel always has the field; without it emptiness is unknowable.
        return Skip(str(f.id), f.name, "no last_message_id field")
    raw_last = f.raw["last_message_id"]
    last: int | None = None
    if raw_last is not None:
        last = parse_snowflake(raw_last)
        if last is None:
            return Skip(str(f.id), f.name, f"invalid last_message_id {raw_last!r}")
    return _decide(f, last, ledger.lookup_channel_name(f.name), settings, now, min_age)


def _decide(
    f: _Facts,
    last: int | None,
    entry: LedgerEntry | None,
    s: ReconcileConfig,
    now: float,
    min_age: float,
) -> _Verdict:
    rid = entry.request_id if entry is not None else None
    if entry is not None:
        # The ledger knows this request: it outranks the age rules.
        if entry.state == "open":
            return _Verdict(None, f"request {rid} is still open", "active", last, rid)
        if entry.state == "failed":
            return _Verdict("ledger_failed", "", "leaked", last, rid)
        finished = entry.last_change
        wait = s.cdp_auto_delete + s.ledger_grace
        if now - finished > wait:
            return _Verdict("ledger_completed", "", "leaked", last, rid)
        why = f"request {rid} completed {_ago(now - finished)} ago; CDP deletes it itself"
        return _Verdict(None, why, "active", last, rid)
    created = snowflake_time(f.id)
    age = now - created
    if last is None:
        if age > min_age:
            return _Verdict("empty_aged", "", "leaked", last)
        why = f"empty, only {_ago(age)} old (min_age {_ago(min_age)})"
        return _Verdict(None, why, "empty", last)
    idle = now - snowflake_time(last)
    # stale also needs min_age: a stale_after shorter than min_age must not delete young
    # channels (the backlog lands late, and CDP may still be posting into it).
    if s.stale_after is not None and idle > s.stale_after and age > min_age:
        return _Verdict("stale", "", "leaked", last)
    threshold = s.stale_after if s.stale_after is not None else s.min_age
    state = "stale" if idle > threshold else "active"
    return _Verdict(None, f"has messages (last {_ago(idle)} ago)", state, last)


def plan(
    channels: Sequence[Any],
    ledger_view: LedgerView | None,
    settings: ReconcileConfig,
    now: float,
    *,
    guild_limit: int,
    guild_id: int | None = None,
) -> Plan:
    """Decide what to delete. Pure: the same inputs always give the same plan."""
    ledger = EMPTY_LEDGER if ledger_view is None else ledger_view
    regex = re.compile(settings.name_pattern)
    total = len(channels)
    emergency = above_watermark(total, guild_limit, settings.high_watermark)
    min_age = settings.emergency_min_age if emergency else settings.min_age
    counts = dict.fromkeys(TEMP_CHANNEL_STATES, 0)
    deletable: list[Action] = []
    skipped: list[Skip] = []
    not_matching = 0
    seen: set[int] = set()
    for raw in channels:
        facts = _parse(raw, guild_id)
        if isinstance(facts, Skip):
            skipped.append(facts)
            continue
        if facts.id in seen:
            skipped.append(Skip(str(facts.id), facts.name, "listed twice"))
            continue
        seen.add(facts.id)
        verdict = _judge(facts, ledger, settings, regex, now, min_age)
        if verdict is None:
            not_matching += 1
            continue
        if isinstance(verdict, Skip):
            skipped.append(verdict)
            continue
        counts[verdict.state] += 1
        if verdict.reason is None:
            skipped.append(Skip(str(facts.id), facts.name, verdict.why))
            continue
        deletable.append(
            Action(
                channel_id=facts.id,
                name=facts.name,
                reason=verdict.reason,
                created_at=snowflake_time(facts.id),
                last_message_id=verdict.last_message_id,
                request_id=verdict.request_id,
            )
        )
    deletable.sort(key=lambda a: (a.created_at, a.channel_id))  # oldest first
    cap = settings.max_deletes_per_run
    actions, later = deletable[:cap], deletable[cap:]
    skipped.extend(
        Skip(str(a.channel_id), a.name, f"{a.reason}, but over max_deletes_per_run ({cap})")
        for a in later
    )
    census = Census(
        at=now,
        channels=total,
        limit=guild_limit,
        high_watermark=settings.high_watermark,
        **counts,
    )
    return Plan(
        now=now,
        emergency=emergency,
        min_age=min_age,
        actions=tuple(actions),
        skipped=tuple(skipped),
        deferred=len(later),
        not_matching=not_matching,
        census=census,
    )


def recheck(
    action: Action,
    fresh: Any,
    ledger_view: LedgerView | None,
    settings: ReconcileConfig,
    now: float,
    *,
    min_age: float,
    guild_id: int | None = None,
) -> tuple[str | None, str]:
    """Judge a channel again from what Discord answered just now: (reason, "") to delete
    it, else (None, why). Any change since the listing keeps it."""
    facts = _parse(fresh, guild_id)
    if isinstance(facts, Skip):
        return None, f"unexpected answer: {facts.why}"
    if facts.id != action.channel_id:
        return None, f"Discord answered for another channel ({facts.id})"
    if facts.type != TEXT_CHANNEL:
        return None, f"type changed to {facts.type}"
    if facts.name != action.name:
        return None, f"renamed to {facts.name!r}"
    ledger = EMPTY_LEDGER if ledger_view is None else ledger_view
    verdict = _judge(facts, ledger, settings, re.compile(settings.name_pattern), now, min_age)
    if verdict is None:
        return None, "name no longer matches name_pattern"
    if isinstance(verdict, Skip):
        return None, verdict.why
    if verdict.last_message_id != action.last_message_id:
        return None, "a message arrived since the listing"
    if verdict.reason is None:
        return None, verdict.why
    return verdict.reason, ""


# -- exhaustion and triggers (pure) -------------------------------------------------------


def exhaustion_seconds(points: Sequence[tuple[float, int]], limit: int) -> float:
    """Seconds until `limit` at the growth rate fitted to the census points (time, count);
    +Inf when not growing (or too few points), 0 when already full."""
    if not points:
        return math.inf
    last_n = points[-1][1]
    if last_n >= limit:
        return 0.0
    if len(points) < 2:
        return math.inf
    mean_t = sum(t for t, _ in points) / len(points)
    mean_n = sum(n for _, n in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return math.inf
    slope = sum((t - mean_t) * (n - mean_n) for t, n in points) / var
    if slope <= 0:
        return math.inf
    return (limit - last_n) / slope


def next_trigger(
    now: float,
    *,
    breaker_state: str,
    closed_since: float | None,
    last_run_at: float | None,
    last_census: Census | None,
    settings: ReconcileConfig,
    last_run_progress: bool = False,
    emergency_retry: float = MIN_LIST_SPACING,
) -> str | None:
    """Why a run is due now, or None.

    * `emergency`: the last census is above the high watermark, in any breaker state.
      Repeated at once while runs make progress, else every `emergency_retry`.
    * nothing else unless the breaker is closed, and not within `settle_delay` of closing.
    * `startup`: no run yet.
    * `recovery`: after closing, a run is due once `settle_delay` has passed and again once
      `min_age` has passed (the backlog of timed-out creates lands after recovery and only
      becomes old enough to delete later).
    * `interval`: `interval` since the last run.

    `last_run_at` is when the last run listed the guild.
    """
    if last_census is not None and last_census.above_watermark:
        if last_run_at is None or last_run_progress or now - last_run_at >= emergency_retry:
            return "emergency"
    if breaker_state != "closed":
        return None
    if closed_since is not None and now - closed_since < settings.settle_delay:
        return None
    if last_run_at is None:
        return "startup"
    if closed_since is not None:
        for checkpoint in (closed_since + settings.settle_delay, closed_since + settings.min_age):
            if now >= checkpoint > last_run_at:
                return "recovery"
    if now - last_run_at >= settings.interval:
        return "interval"
    return None


# -- the report -----------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    run_id: str
    trigger: str
    dry_run: bool
    started_at: float
    finished_at: float | None = None
    result: str = "ok"
    listed: int = 0
    emergency: bool = False
    planned: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    gone: list[dict[str, Any]] = field(default_factory=list)  # 404: already deleted
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    deferred: int = 0
    not_matching: int = 0
    census: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def capped(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return items[:REPORT_LIST_LIMIT]

        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "result": self.result,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "listed": self.listed,
            "emergency": self.emergency,
            "planned": capped(self.planned),
            "deleted": capped(self.deleted),
            "gone": capped(self.gone),
            "skipped": capped(self.skipped),
            "errors": capped(self.errors),
            "counts": {
                "planned": len(self.planned),
                "deleted": len(self.deleted),
                "gone": len(self.gone),
                "skipped": len(self.skipped),
                "errors": len(self.errors),
                "deferred": self.deferred,
                "not_matching": self.not_matching,
            },
            "census": self.census,
            "notes": list(self.notes),
        }


# format_report groups "only 3m old" with "only 5m old", and one request's id with another's.
_GROUP_DURATIONS = re.compile(r"\b(?:\d+(?:\.\d+)?(?:ms|h|m|s|d))+\b")
_GROUP_REQUESTS = re.compile(r"request \S+ ")


def format_report(report: ReconcileReport) -> str:
    """Human-readable report for the CLI."""
    started = datetime.fromtimestamp(report.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    mode = "dry run" if report.dry_run else "live"
    lines = [f"reconcile {report.run_id} ({mode}, trigger {report.trigger}) at {started}"]
    lines.extend(f"note: {n}" for n in report.notes)
    if report.census is not None:
        c = report.census
        temp = ", ".join(f"{k} {v}" for k, v in c["temp"].items())
        lines.append(
            f"guild: {c['channels']}/{c['limit']} channels ({c['usage']:.0%})"
            + (" - above the high watermark" if c["above_watermark"] else "")
            + f"; temporary: {temp}"
        )
    verb = "would delete" if report.dry_run else "planned"
    lines.append(
        f"result: {report.result}; {verb} {len(report.planned)}, deleted {len(report.deleted)}, "
        f"already gone {len(report.gone)}, kept {len(report.skipped)}, "
        f"errors {len(report.errors)}"
        + (f", {report.deferred} left for the next run" if report.deferred else "")
    )
    shown = report.planned if report.dry_run else report.deleted
    if shown:
        lines.append("would delete:" if report.dry_run else "deleted:")
        for item in shown[:50]:
            lines.append(f"  {item['id']}  {item['name']}  ({item['reason']})")
        if len(shown) > 50:
            lines.append(f"  ... and {len(shown) - 50} more")
    if report.skipped:
        why: dict[str, int] = {}
        for s in report.skipped:
            key = _GROUP_DURATIONS.sub("N", _GROUP_REQUESTS.sub("request R ", s["why"]))
            why[key] = why.get(key, 0) + 1
        lines.append("kept:")
        for text, n in sorted(why.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>4} x {text}")
    for err in report.errors[:20]:
        lines.append(f"error: {err.get('id') or '-'} {err.get('name') or ''}: {err['error']}")
    return "\n".join(lines)


# -- apply ----------------------------------------------------------------------------------


class ChannelsAPI(Protocol):
    """The REST calls the reconciler makes (DiscordRestClient provides them)."""

    async def list_guild_channels(self, guild_id: int | str) -> Any: ...

    async def get_channel(self, channel_id: int | str) -> Any: ...

    async def delete_channel(self, channel_id: int | str) -> Any: ...


@dataclass
class _RunState:
    report: ReconcileReport
    abort: str | None = None  # why the remaining deletions are not attempted


class Reconciler:
    """Owns the reconcile runs, the census and the loop. One per guild.

    Concurrency: one run at a time (an asyncio.Lock). A call to `run` made while a run of
    the same mode (dry or not) is in progress joins it and returns its report: it
    reconciles the same guild at the same moment, and a burst of requests must not list
    the guild over and over. A call of the other mode waits for it, then runs.
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
        census_interval: float = CENSUS_INTERVAL,
        min_list_spacing: float = MIN_LIST_SPACING,
    ) -> None:
        self._settings = settings
        self._guild_id = guild_id
        self._guild = str(guild_id)
        self._limit = channel_limit
        self._rest = rest
        self._ledger = ledger
        self._state_dir = state_dir
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._concurrency = max(1, concurrency)
        self._census_interval = census_interval
        self._min_list_spacing = min_list_spacing
        self._lock = asyncio.Lock()
        self._current: tuple[bool, asyncio.Task[ReconcileReport]] | None = None
        self._census: Census | None = None
        self._history: deque[tuple[float, int]] = deque(maxlen=GROWTH_POINTS)
        self._last_list_attempt = -math.inf  # wall clock
        self._last_list_failed = False
        self._listing: tuple[float, list[Any]] | None = None  # (when, channels)
        self._last_run_at: float | None = None  # when the last run listed the guild
        self._last_run_progress = False
        self._last_report: ReconcileReport | None = None
        self._last_success: float | None = None
        metrics.guild_channel_limit.labels(guild=self._guild).set(channel_limit)

    # -- accessors --------------------------------------------------------------------

    @property
    def settings(self) -> ReconcileConfig:
        return self._settings

    @property
    def last_census(self) -> Census | None:
        return self._census

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

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        rest: ChannelsAPI,
        ledger: LedgerView | None,
        state_dir: StateDir,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOG,
    ) -> Reconciler:
        """A reconciler for the config's guild, limit and `reconcile` section."""
        return cls(
            config.reconcile,
            guild_id=config.discord.guild_id,
            channel_limit=config.discord.channel_limit,
            rest=rest,
            ledger=ledger,
            state_dir=state_dir,
            metrics=metrics,
            clock=clock,
            logger=logger,
            census_interval=config.reconcile.census_interval,
            min_list_spacing=config.reconcile.list_spacing,
        )

    def reconfigure(self, settings: ReconcileConfig, *, channel_limit: int | None = None) -> None:
        """Take new settings (config reload); they apply from the next run."""
        self._settings = settings
        if channel_limit is not None:
            self._limit = channel_limit
            self._metrics.guild_channel_limit.labels(guild=self._guild).set(channel_limit)

    def status(self) -> dict[str, Any]:
        """JSON for /status: `channels` (the census) and `reconcile` (runs)."""
        census = None
        if self._census is not None:
            census = self._census.as_dict()
            census["exhaustion_seconds"] = _json_number(self._exhaustion(self._clock.time()))
        last = self._last_report
        return {
            "channels": census,
            "reconcile": {
                "enabled": self._settings.enabled,
                "dry_run": self._settings.dry_run,
                "running": self.running,
                "last_success": self._last_success,
                "last_run": None
                if last is None
                else {
                    "run_id": last.run_id,
                    "trigger": last.trigger,
                    "dry_run": last.dry_run,
                    "result": last.result,
                    "started_at": last.started_at,
                    "finished_at": last.finished_at,
                    "planned": len(last.planned),
                    "deleted": len(last.deleted),
                    "gone": len(last.gone),
                    "errors": len(last.errors),
                    "deferred": last.deferred,
                },
            },
        }

    # -- listing and census -----------------------------------------------------------

    async def _list(self) -> list[Any]:
        self._last_list_attempt = self._clock.time()
        self._last_list_failed = True
        channels = await self._rest.list_guild_channels(self._guild_id)
        if not isinstance(channels, list):
            raise DiscordMalformedResponse(
                f"listing: expected a list, got {type(channels).__name__}",
                route="/guilds/{guild_id}/channels",
                method="GET",
            )
        self._last_list_failed = False
        self._listing = (self._clock.time(), channels)
        return channels

    def _ledger_view(self) -> LedgerView | None:
        if isinstance(self._ledger, RequestLedger):
            return self._ledger.snapshot()
        return self._ledger

    async def make_plan(self, *, reuse: float = 0.0) -> Plan:
        """List the guild (one request) and plan; updates the census. A listing younger
        than `reuse` seconds is planned from again instead (the re-check still asks
        Discord about every channel before deleting it)."""
        now = self._clock.time()
        if self._listing is not None and now - self._listing[0] < reuse:
            channels = self._listing[1]
        else:
            channels = await self._list()
            now = self._clock.time()
        p = plan(
            channels,
            self._ledger_view(),
            self._settings,
            now,
            guild_limit=self._limit,
            guild_id=self._guild_id,
        )
        self._record_census(p.census)
        return p

    async def census(self, *, max_age: float | None = None) -> Census:
        """The census, listing only if the last one is older than `max_age` (default: the
        census interval) and no listing was tried within the minimum spacing."""
        now = self._clock.time()
        limit = self._census_interval if max_age is None else max_age
        if self._census is not None and (
            now - self._census.at < limit or now - self._last_list_attempt < self._min_list_spacing
        ):
            return self._census
        return (await self.make_plan()).census

    def _record_census(self, census: Census) -> None:
        self._census = census
        self._history.append((census.at, census.channels))
        g = self._guild
        self._metrics.guild_channels.labels(guild=g).set(census.channels)
        self._metrics.guild_channel_limit.labels(guild=g).set(census.limit)
        for state, n in census.temp().items():
            self._metrics.temp_channels.labels(guild=g, state=state).set(n)
        self._metrics.guild_channel_exhaustion.labels(guild=g).set(self._exhaustion(census.at))

    def _exhaustion(self, now: float) -> float:
        points = [(t, n) for t, n in self._history if now - t <= GROWTH_WINDOW]
        return exhaustion_seconds(points, self._limit)

    # -- runs -------------------------------------------------------------------------

    def _effective_dry_run(self, dry_run: bool | None) -> tuple[bool, str | None]:
        if not self._settings.enabled:
            return True, "reconcile.enabled is false: dry run only"
        if self._settings.dry_run:
            return True, "reconcile.dry_run is true: dry run only" if dry_run is False else None
        return bool(dry_run), None

    async def run(self, *, dry_run: bool | None = None, trigger: str) -> ReconcileReport:
        """List, plan, re-check and delete (or, dry, only report and audit). The config's
        `dry_run: true` or `enabled: false` force a dry run whatever is asked."""
        dry, note = self._effective_dry_run(dry_run)
        current = self._current
        if current is not None and current[0] == dry and not current[1].done():
            return await asyncio.shield(current[1])
        task = asyncio.ensure_future(self._locked(None, dry, trigger, note))
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
        self, given: Plan | None, dry: bool, trigger: str, note: str | None
    ) -> ReconcileReport:
        async with self._lock:
            report = ReconcileReport(
                run_id=uuid.uuid4().hex[:12],
                trigger=trigger,
                dry_run=dry,
                started_at=self._clock.time(),
            )
            if note:
                report.notes.append(note)
            try:
                await self._run(report, given)
            finally:
                self._finish(report)
            return report

    async def _run(self, report: ReconcileReport, given: Plan | None) -> None:
        if given is None:
            try:
                p = await self.make_plan(reuse=LISTING_REUSE)
            except (DiscordError, StateError) as exc:
                report.errors.append({"id": None, "name": None, "error": f"listing: {exc}"})
                self._log.error("reconcile %s: cannot list the guild: %s", report.run_id, exc)
                return
        else:
            p = given
        self._last_run_at = p.now
        report.listed = p.census.channels
        report.emergency = p.emergency
        report.planned = [a.as_dict() for a in p.actions]
        report.skipped = [s.as_dict() for s in p.skipped]
        report.deferred = p.deferred
        report.not_matching = p.not_matching
        report.census = p.census.as_dict()
        if p.emergency:
            report.notes.append(
                f"above the high watermark: emergency_min_age {_ago(p.min_age)} applies"
            )
        state = _RunState(report)
        if report.dry_run:
            for a in p.actions:
                await self._audit(state, a, a.reason)
                if state.abort:
                    break
            return
        sem = asyncio.Semaphore(self._concurrency)

        async def one(a: Action) -> None:
            async with sem:
                if state.abort:
                    report.skipped.append(Skip(str(a.channel_id), a.name, state.abort).as_dict())
                    return
                await self._delete_one(state, p, a)

        results = await asyncio.gather(*(one(a) for a in p.actions), return_exceptions=True)
        for a, res in zip(p.actions, results, strict=True):
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                # A bug, not a Discord answer: keep going with the others, but say it loudly.
                self._log.error("reconcile: deleting %s failed", a.channel_id, exc_info=res)
                report.errors.append(_err(a, f"internal error: {res!r}"))

    async def _delete_one(self, state: _RunState, p: Plan, a: Action) -> None:
        report = state.report
        try:
            fresh = await self._rest.get_channel(a.channel_id)
        except DiscordError as exc:
            self._discord_failed(state, a, "re-check", exc)
            return
        reason, why = recheck(
            a,
            fresh,
            self._ledger,  # live: a request may have (re)opened since the plan
            self._settings,
            self._clock.time(),
            min_age=p.min_age,
            guild_id=self._guild_id,
        )
        if reason is None:
            report.skipped.append(Skip(str(a.channel_id), a.name, f"re-check: {why}").as_dict())
            self._log.info("reconcile: kept %s (%s): %s", a.channel_id, a.name, why)
            return
        if state.abort:
            report.skipped.append(Skip(str(a.channel_id), a.name, state.abort).as_dict())
            return
        # Shielded so a cancelled run never deletes without writing the audit line.
        await asyncio.shield(self._delete_and_audit(state, a, reason))

    @staticmethod
    def _discord_failed(state: _RunState, a: Action, step: str, exc: DiscordError) -> None:
        """404 means already gone (not an error); a 401 stops the rest of the run."""
        if isinstance(exc, DiscordNotFound):
            state.report.gone.append({"id": str(a.channel_id), "name": a.name})
            return
        state.report.errors.append(_err(a, f"{step}: {exc}"))
        if isinstance(exc, DiscordUnauthorized):
            state.abort = "not attempted: Discord rejected the token"

    async def _delete_and_audit(self, state: _RunState, a: Action, reason: str) -> None:
        report = state.report
        try:
            await self._rest.delete_channel(a.channel_id)
        except DiscordError as exc:
            self._discord_failed(state, a, "delete", exc)
            return
        report.deleted.append({"id": str(a.channel_id), "name": a.name, "reason": reason})
        self._metrics.channels_deleted.labels(guild=self._guild, reason=reason).inc()
        self._log.info("reconcile: deleted %s (%s): %s", a.channel_id, a.name, reason)
        await self._audit(state, a, reason)

    async def _audit(self, state: _RunState, a: Action, reason: str) -> None:
        report = state.report
        record = {
            "ts": self._clock.time(),
            "run_id": report.run_id,
            "trigger": report.trigger,
            "guild_id": self._guild,
            "channel_id": str(a.channel_id),
            "name": a.name,
            "created_at": a.created_at,
            "reason": reason,
            "request_id": a.request_id,
            "dry_run": report.dry_run,
        }
        try:
            # In a thread: the fsync must not stall the gate's streams on this loop.
            await asyncio.to_thread(self._state_dir.append_audit, record)
        except StateError as exc:
            # No deletion without an audit line: stop here.
            report.errors.append(_err(a, f"audit log: {exc}"))
            state.abort = "not attempted: the audit log cannot be written"
            self._log.error("reconcile: %s; stopping this run", exc)

    def _finish(self, report: ReconcileReport) -> None:
        now = self._clock.time()
        report.finished_at = now
        listed = report.census is not None
        if not listed:
            report.result = "error"
        elif report.dry_run:
            report.result = "error" if report.errors else "dry_run"
        elif report.errors:
            report.result = "partial" if report.deleted else "error"
        else:
            report.result = "ok"
        self._metrics.reconcile_runs.labels(result=report.result).inc()
        if report.result in ("ok", "dry_run"):
            # A dry run is the configured behaviour working, not a stuck reconciler.
            self._last_success = now
            self._metrics.reconcile_last_success.set(now)
        removed = len(report.deleted) + len(report.gone)
        self._last_run_progress = bool(report.deleted)
        self._listing = None  # a listing from before this run's deletions is not reused
        if removed and self._census is not None:
            # What the guild holds now, without listing it again.
            c = self._census
            self._record_census(
                replace(
                    c,
                    at=max(now, c.at),
                    channels=max(0, c.channels - removed),
                    leaked=max(0, c.leaked - removed),
                )
            )
            report.census = self._census.as_dict() if self._census else report.census
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
        now = self._clock.time()
        may_list = now - self._last_list_attempt >= self._min_list_spacing
        census_due = self._census is None or now - self._census.at >= self._census_interval
        if census_due and may_list and not self.running:
            try:
                await self.census(max_age=0.0)
            except MonitorError as exc:
                self._log.warning("reconcile: census failed: %s", exc)
        if not self._settings.enabled:
            return None
        state, since = breaker_state_fn()
        now = self._clock.time()
        s = self._settings
        trigger = next_trigger(
            now,
            breaker_state=state,
            closed_since=since if state == "closed" else None,
            last_run_at=self._last_run_at,
            last_census=self._census,
            settings=s,
            last_run_progress=self._last_run_progress,
            # Dry runs delete nothing, so "progress" never comes: don't repeat them fast.
            emergency_retry=s.interval if s.dry_run else self._min_list_spacing,
        )
        if trigger is None:
            return None
        if self._last_list_failed and now - self._last_list_attempt < self._min_list_spacing:
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


def _err(a: Action, text: str) -> dict[str, Any]:
    return {"id": str(a.channel_id), "name": a.name, "error": text}


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _consume_exception(task: asyncio.Task[ReconcileReport]) -> None:
    # Callers see the exception; this only keeps a run whose callers all went away from
    # ending as "exception never retrieved" without a trace.
    if not task.cancelled() and task.exception() is not None:
        _LOG.warning("reconcile run failed", exc_info=task.exception())


# -- one-shot (CLI) -------------------------------------------------------------------------


async def reconcile_once(
    config: Config,
    *,
    dry_run: bool,
    session: aiohttp.ClientSession,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
) -> ReconcileReport:
    """One run straight against Discord, without a daemon. Reads the daemon's request
    ledger (read-only) if the state directory has one; writes the audit log there."""
    metrics = Metrics(CollectorRegistry())
    rest = DiscordRestClient.from_config(
        config.discord, session=session, metrics=metrics, clock=clock, logger=logger
    )
    state_dir = StateDir(config.state_dir, logger=logger)
    ledger = RequestLedger.load_snapshot(state_dir, now=clock.time())
    reconciler = Reconciler.from_config(
        config,
        rest=rest,
        ledger=ledger,
        state_dir=state_dir,
        metrics=metrics,
        clock=clock,
        logger=logger,
    )
    return await reconciler.run(dry_run=dry_run, trigger="cli")


__all__ = [
    "REASONS",
    "Action",
    "Census",
    "ChannelsAPI",
    "Plan",
    "ReconcileReport",
    "Reconciler",
    "Skip",
    "above_watermark",
    "exhaustion_seconds",
    "format_report",
    "next_trigger",
    "plan",
    "recheck",
    "reconcile_once",
]
