"""The reconciler: the pure planner, the triggers, and runs against the Discord simulator
(including hypothesis property tests with messages arriving while a run is under way)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.config import ReconcileConfig, parse_config
from monitor.discord.rest import DiscordRestClient
from monitor.discord.snowflake import make_snowflake, snowflake_time
from monitor.ledger import LEDGER_FILE, RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile import (
    Action,
    Census,
    Plan,
    Reconciler,
    exhaustion_seconds,
    format_report,
    next_trigger,
    plan,
    recheck,
    reconcile_once,
)
from monitor.sim.discord import (
    DEFAULT_ROUTE_LIMITS,
    DiscordSimulator,
    Message,
    RouteLimit,
    SimSettings,
)
from monitor.state import StateDir

NOW = 1_700_000_000.0
GUILD = 1_100_000_000_000_000_001
MIN = 60.0
HOUR = 3600.0


def cfg(**kw: Any) -> ReconcileConfig:
    return ReconcileConfig(**kw)


_seq = itertools.count(1)


def sf(age: float, now: float = NOW) -> int:
    """A snowflake created `age` seconds before `now` (unique per call)."""
    return make_snowflake(now - age, increment=next(_seq) & 0xFFF)


def chan(
    age: float,
    name: str = "",
    *,
    type_: int = 0,
    last_msg_age: float | None = None,
    cid: int | None = None,
) -> dict[str, Any]:
    cid = cid if cid is not None else sf(age)
    out: dict[str, Any] = {
        "id": str(cid),
        "type": type_,
        "guild_id": str(GUILD),
        "name": name or f"cdp-chat-{cid:x}",
        "parent_id": None,
        "position": 0,
    }
    if type_ in (0, 5):
        out["last_message_id"] = None if last_msg_age is None else str(sf(last_msg_age))
    return out


def ids(actions: Any) -> list[str]:
    return [str(a.channel_id) for a in actions]


def why_of(p: Plan, cid: str) -> str:
    return next(s.why for s in p.skipped if s.channel_id == cid)


# -- the planner -----------------------------------------------------------------------------


def test_empty_aged_deletes_only_old_empty_channels() -> None:
    old, young, with_msg = chan(11 * MIN), chan(9 * MIN), chan(HOUR, last_msg_age=HOUR)
    p = plan([old, young, with_msg], None, cfg(), NOW, guild_limit=500)
    assert ids(p.actions) == [old["id"]]
    assert p.actions[0].reason == "empty_aged"
    assert "only 9m old" in why_of(p, young["id"])
    assert "has messages" in why_of(p, with_msg["id"])
    assert not p.emergency and p.min_age == 600


def test_ledger_completed_waits_for_cdp_and_the_grace() -> None:
    ledger = RequestLedger(state_dir=None)
    done_long_ago, done_just_now = chan(30, "cdp-chat-aaa"), chan(30, "cdp-chat-bbb")
    ledger.opened("AAA", NOW - 400)
    ledger.completed("AAA", NOW - 126)  # > cdp_auto_delete 5s + ledger_grace 120s
    ledger.opened("bbb", NOW - 400)
    ledger.completed("bbb", NOW - 124)
    p = plan([done_long_ago, done_just_now], ledger.snapshot(), cfg(), NOW, guild_limit=500)
    assert [(str(a.channel_id), a.reason, a.request_id) for a in p.actions] == [
        (done_long_ago["id"], "ledger_completed", "aaa")
    ]
    assert "CDP deletes it itself" in why_of(p, done_just_now["id"])


def test_ledger_failed_deletes_regardless_of_age_and_messages() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("late1", NOW - 1)
    ledger.failed("late2", NOW - 1)
    brand_new = chan(0, "cdp-chat-late1")
    with_msgs = chan(1, "cdp-对话-late2", last_msg_age=0)
    p = plan([brand_new, with_msgs], ledger.snapshot(), cfg(), NOW, guild_limit=500)
    assert sorted(ids(p.actions)) == sorted([brand_new["id"], with_msgs["id"]])
    assert {a.reason for a in p.actions} == {"ledger_failed"}


def test_ledger_failed_still_needs_a_match_and_no_protection() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("x1", NOW)
    ledger.failed("x2", NOW)
    protected = chan(0, "cdp-chat-x1")
    custom = cfg(
        name_pattern="^cdp-chat-",
        protected_channel_ids=frozenset({int(protected["id"])}),
    )
    old_prefix = chan(0, "cdp-对话-x2")  # the ledger knows it, the custom pattern does not
    p = plan([protected, old_prefix], ledger.snapshot(), custom, NOW, guild_limit=500)
    assert p.actions == ()
    assert why_of(p, protected["id"]) == "protected id"
    assert p.not_matching == 1


def test_open_request_is_never_deleted() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("busy", NOW - 3 * HOUR)
    old_empty = chan(3 * HOUR, "cdp-chat-busy")
    s = cfg(stale_after=HOUR)
    p = plan([old_empty], ledger.snapshot(), s, NOW, guild_limit=500)
    assert p.actions == ()
    assert "still open" in why_of(p, old_empty["id"])
    # Even in an emergency.
    p = plan([old_empty], ledger.snapshot(), s, NOW, guild_limit=1)
    assert p.emergency and p.actions == ()


def test_stale_only_when_configured_and_older_than_min_age() -> None:
    idle = chan(3 * HOUR, last_msg_age=2 * HOUR)
    busy = chan(3 * HOUR, last_msg_age=10 * MIN)
    p = plan([idle, busy], None, cfg(), NOW, guild_limit=500)
    assert p.actions == ()
    # Idle longer than min_age: reported as stale, but kept without stale_after.
    assert (p.census.stale, p.census.active) == (1, 1)
    p = plan([idle, busy], None, cfg(stale_after=HOUR), NOW, guild_limit=500)
    assert [(str(a.channel_id), a.reason) for a in p.actions] == [(idle["id"], "stale")]
    # A stale_after below min_age does not delete channels younger than min_age.
    young_idle = chan(5 * MIN, last_msg_age=4 * MIN)
    p = plan([young_idle], None, cfg(stale_after=MIN), NOW, guild_limit=500)
    assert p.actions == ()


@pytest.mark.parametrize(
    ("type_", "label"),
    [(2, "voice"), (4, "category"), (5, "announcement"), (11, "thread"), (13, "stage"),
     (15, "forum"), (99, "unknown")],
)  # fmt: skip
def test_non_text_types_are_never_deleted(type_: int, label: str) -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("t1", NOW)
    c = chan(30 * 86_400.0, "cdp-chat-t1", type_=type_)
    c["last_message_id"] = None
    p = plan([c], ledger.snapshot(), cfg(stale_after=MIN), NOW, guild_limit=1)
    assert p.actions == (), label
    assert why_of(p, c["id"]) == f"type {type_} is not a text channel"


@pytest.mark.parametrize(
    "name",
    ["general", "x-cdp-chat-1", "cdp-chatter-1", "cdpchat-1", "cdp-chat", " cdp-chat-1",
     "CDP-CHAT-1", "cdp-talk-1"],
)  # fmt: skip
def test_names_that_do_not_match_are_never_deleted(name: str) -> None:
    c = chan(30 * 86_400.0, name)
    p = plan([c], None, cfg(stale_after=MIN), NOW, guild_limit=1)
    assert p.actions == ()
    assert p.not_matching == 1


def test_protected_ids_are_never_deleted() -> None:
    c = chan(30 * 86_400.0)
    p = plan(
        [c],
        None,
        cfg(protected_channel_ids=frozenset({int(c["id"])})),
        NOW,
        guild_limit=1,
    )
    assert p.actions == ()
    assert why_of(p, c["id"]) == "protected id"


def test_high_watermark_switches_to_emergency_min_age() -> None:
    five_min = chan(5 * MIN)
    one_min = chan(1 * MIN)
    filler = [chan(HOUR, "general", cid=None) for _ in range(398)]
    calm = plan([five_min, one_min, *filler], None, cfg(), NOW, guild_limit=500)  # 400 = 80%
    assert calm.emergency and ids(calm.actions) == [five_min["id"]]
    below = plan([five_min, one_min, *filler[:-1]], None, cfg(), NOW, guild_limit=500)
    assert not below.emergency and below.actions == ()
    assert below.census.above_watermark is False and calm.census.above_watermark is True


def test_oldest_first_and_capped() -> None:
    chans = [chan(HOUR + i * MIN) for i in range(10)]
    random.Random(3).shuffle(chans)
    p = plan(chans, None, cfg(max_deletes_per_run=3), NOW, guild_limit=500)
    oldest = sorted(chans, key=lambda c: int(c["id"]))[:3]
    assert ids(p.actions) == [c["id"] for c in oldest]
    assert p.deferred == 7
    assert sum("over max_deletes_per_run (3)" in s.why for s in p.skipped) == 7
    assert p.census.leaked == 10  # the census counts all of them


def test_bad_listing_entries_are_skipped_not_fatal() -> None:
    good = chan(HOUR)
    no_last = chan(HOUR)
    del no_last["last_message_id"]
    bad_last = chan(HOUR)
    bad_last["last_message_id"] = "soon"
    other_guild = chan(HOUR)
    other_guild["guild_id"] = "42"
    entries: list[Any] = [
        "a string",
        None,
        {"type": 0, "name": "cdp-chat-noid", "last_message_id": None},
        {"id": "12ab", "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": True, "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": "-5", "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(2**64), "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": "0", "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": None, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": False, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": 0, "name": 7, "last_message_id": None},
        {"id": str(sf(HOUR)), "type": 0, "last_message_id": None},
        no_last,
        bad_last,
        other_guild,
        good,
        dict(good),  # listed twice
    ]
    p = plan(entries, None, cfg(), NOW, guild_limit=500, guild_id=GUILD)
    assert ids(p.actions) == [good["id"]]
    whys = [s.why for s in p.skipped]
    assert len(whys) == len(entries) - 1
    for needle in (
        "not an object",
        "missing or invalid id",
        "unknown channel type",
        "name is not a string",
        "no last_message_id field",
        "invalid last_message_id",
        "another guild",
        "listed twice",
    ):
        assert any(needle in w for w in whys), needle


def test_census_states() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("open1", NOW)
    chans = [
        chan(HOUR, "cdp-chat-open1"),  # active: open request
        chan(MIN, last_msg_age=MIN),  # active: recent message
        chan(MIN),  # empty: young
        chan(2 * HOUR, last_msg_age=HOUR),  # stale: idle, kept (no stale_after)
        chan(HOUR),  # leaked
        chan(HOUR, "general"),
        chan(HOUR, "cdp-chat-cat", type_=4),
    ]
    c = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=10).census
    assert (c.active, c.empty, c.stale, c.leaked) == (2, 1, 1, 1)
    assert c.channels == 7 and c.limit == 10 and c.usage == pytest.approx(0.7)
    assert c.as_dict()["temp"] == {"active": 2, "empty": 1, "stale": 1, "leaked": 1}


# -- the re-check ------------------------------------------------------------------------------


def _action_for(c: dict[str, Any], **kw: Any) -> Action:
    p = plan([c], kw.pop("ledger", None), cfg(**kw), NOW, guild_limit=500)
    assert len(p.actions) == 1
    return p.actions[0]


def test_recheck_accepts_an_unchanged_channel() -> None:
    c = chan(HOUR)
    a = _action_for(c)
    assert recheck(a, dict(c), None, cfg(), NOW + 5, min_age=600) == ("empty_aged", "")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"last_message_id": str(make_snowflake(NOW))}, "a message arrived"),
        ({"name": "cdp-chat-renamed"}, "renamed"),
        ({"name": "general"}, "renamed"),
        ({"type": 2}, "type changed"),
        ({"id": "123"}, "another channel"),
        ({"type": "text"}, "unexpected answer"),
    ],
)
def test_recheck_keeps_a_changed_channel(change: dict[str, Any], why: str) -> None:
    c = chan(HOUR)
    a = _action_for(c)
    reason, text = recheck(a, {**c, **change}, None, cfg(), NOW, min_age=600)
    assert reason is None and why in text


def test_recheck_reads_the_live_ledger() -> None:
    ledger = RequestLedger(state_dir=None)
    c = chan(HOUR, "cdp-chat-r9")
    a = _action_for(c)
    ledger.opened("r9", NOW)  # the request started between plan and delete
    reason, text = recheck(a, c, ledger, cfg(), NOW, min_age=600)
    assert reason is None and "still open" in text


def test_recheck_with_a_message_keeps_even_a_failed_request() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("f1", NOW)
    c = chan(MIN, "cdp-chat-f1")
    a = _action_for(c, ledger=ledger.snapshot())
    fresh = {**c, "last_message_id": str(make_snowflake(NOW))}
    assert recheck(a, fresh, ledger, cfg(), NOW, min_age=600)[0] is None


# -- triggers and exhaustion ---------------------------------------------------------------------


def census(channels: int, limit: int = 500, at: float = NOW) -> Census:
    return Census(at=at, channels=channels, limit=limit, high_watermark=0.8)


def trig(now: float, **kw: Any) -> str | None:
    kw.setdefault("breaker_state", "closed")
    kw.setdefault("closed_since", NOW - 10 * HOUR)
    kw.setdefault("last_run_at", NOW - MIN)
    kw.setdefault("last_census", census(100))
    kw.setdefault("settings", cfg())
    return next_trigger(now, **kw)


def test_interval_while_closed() -> None:
    assert trig(NOW, last_run_at=NOW - 299) is None
    assert trig(NOW, last_run_at=NOW - 300) == "interval"
    for state in ("open", "half_open", "forced_open"):
        assert trig(NOW, last_run_at=NOW - 10 * HOUR, breaker_state=state) is None


def test_startup_run_after_settle() -> None:
    assert trig(NOW, last_run_at=None) == "startup"
    assert trig(NOW, last_run_at=None, closed_since=NOW - 10) is None
    assert trig(NOW, last_run_at=None, breaker_state="open") is None


def test_recovery_after_settle_delay_and_again_after_min_age() -> None:
    closed = NOW
    s = cfg(settle_delay=30.0, min_age=600.0, interval=3600.0)
    run_before = closed - 100
    base = {"closed_since": closed, "settings": s}
    assert trig(closed + 29, last_run_at=run_before, **base) is None  # settling
    assert trig(closed + 30, last_run_at=run_before, **base) == "recovery"
    assert trig(closed + 31, last_run_at=closed + 30, **base) is None
    assert trig(closed + 599, last_run_at=closed + 30, **base) is None
    assert trig(closed + 600, last_run_at=closed + 30, **base) == "recovery"  # backlog aged
    assert trig(closed + 601, last_run_at=closed + 600, **base) is None
    assert trig(closed + 600 + 3600, last_run_at=closed + 600, **base) == "interval"


def test_emergency_in_any_breaker_state() -> None:
    full = census(490)
    for state in ("closed", "open", "half_open", "forced_open"):
        assert trig(NOW, breaker_state=state, last_census=full, last_run_at=None) == "emergency"
    # Right after a run: again at once only if that run made progress.
    assert trig(NOW, last_census=full, last_run_at=NOW - 1, breaker_state="open") is None
    assert (
        trig(
            NOW,
            last_census=full,
            last_run_at=NOW - 1,
            breaker_state="open",
            last_run_progress=True,
        )
        == "emergency"
    )
    assert trig(NOW, last_census=full, last_run_at=NOW - 30, breaker_state="open") == "emergency"
    assert trig(NOW, last_census=census(399), last_run_at=None, breaker_state="open") is None


def test_exhaustion_estimate() -> None:
    assert exhaustion_seconds([], 500) == math.inf
    assert exhaustion_seconds([(0.0, 100)], 500) == math.inf
    assert exhaustion_seconds([(0.0, 500)], 500) == 0.0
    assert exhaustion_seconds([(0.0, 100), (60.0, 100)], 500) == math.inf
    assert exhaustion_seconds([(0.0, 200), (60.0, 100)], 500) == math.inf
    # 1 channel per second, 400 to go.
    points = [(float(t), 90 + t) for t in range(0, 11)]
    assert exhaustion_seconds(points, 500) == pytest.approx(400.0)


# -- against the simulator -----------------------------------------------------------------------


@asynccontextmanager
async def sim_env(
    tmp_path: Path,
    *,
    settings: ReconcileConfig | None = None,
    sim_settings: SimSettings | None = None,
    ledger: RequestLedger | None = None,
    channel_limit: int = 500,
    global_rate: float = 40.0,
    rest_wrapper: Callable[[DiscordRestClient], Any] | None = None,
    client_token: str | None = None,
) -> AsyncIterator[Env]:
    clock = FakeClock(NOW)
    sim = DiscordSimulator(sim_settings or SimSettings(), clock=clock)
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            metrics = Metrics(CollectorRegistry())
            rest = DiscordRestClient(
                session=http,
                metrics=metrics,
                token=client_token or sim.settings.token,
                api_base=sim.api_base,
                clock=clock,
                global_rate=global_rate,
                backoff_base=0.001,
                backoff_cap=0.01,
            )
            state_dir = StateDir(tmp_path / "state")
            ledger = ledger if ledger is not None else RequestLedger(state_dir=None, clock=clock)
            rec = Reconciler(
                settings or cfg(),
                guild_id=sim.settings.guild_id,
                channel_limit=channel_limit,
                rest=rest_wrapper(rest) if rest_wrapper else rest,
                ledger=ledger,
                state_dir=state_dir,
                metrics=metrics,
                clock=clock,
            )
            yield Env(sim, http, rest, rec, state_dir, metrics, clock, ledger)
    finally:
        await sim.stop()


@dataclass
class Env:
    sim: DiscordSimulator
    http: aiohttp.ClientSession
    rest: DiscordRestClient
    rec: Reconciler
    state_dir: StateDir
    metrics: Metrics
    clock: FakeClock
    ledger: RequestLedger

    async def seed(
        self, count: int, *, age: float = 0.0, messages: int = 0, type_: int = 0, **kw: Any
    ) -> list[str]:
        url = f"{self.sim.admin_url}/guilds/{self.sim.settings.guild_id}/channels"
        body = {"count": count, "age_seconds": age, "messages": messages, "type": type_, **kw}
        async with self.http.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return list((await resp.json())["channels"])

    async def post_message(self, channel_id: str) -> int:
        url = f"{self.sim.admin_url}/channels/{channel_id}/messages"
        async with self.http.post(url, json={"content": "hi"}) as resp:
            return resp.status

    def channel_ids(self) -> set[str]:
        return {str(c) for c in self.sim.state.channels}

    def audit(self) -> list[dict[str, Any]]:
        return list(self.state_dir.read_audit())

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def requests(self, route: str) -> int:
        return sum(n for (r, _s), n in self.sim.state.requests.items() if r == route)


async def seed_mix(env: Env) -> tuple[list[str], list[str]]:
    """Leaked channels and traps; returns (leaked ids, trap ids)."""
    leaked = await env.seed(6, age=HOUR)
    traps = [
        *await env.seed(2, age=HOUR, messages=1),  # in use
        *await env.seed(2, age=MIN),  # young
        *await env.seed(2, age=HOUR, prefix="general-"),  # not ours
        *await env.seed(1, age=HOUR, type_=4),  # a category named cdp-chat-...
        *await env.seed(1, age=HOUR, type_=2),  # voice
    ]
    return leaked, traps


async def test_apply_deletes_exactly_the_plan_and_audits_each_once(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked, traps = await seed_mix(env)
        p = await env.rec.make_plan()
        assert sorted(ids(p.actions)) == sorted(leaked)
        report = await env.rec.apply(p, trigger="test")
        assert report.result == "ok" and not report.errors
        assert sorted(d["id"] for d in report.deleted) == sorted(leaked)
        assert env.channel_ids() == set(traps)
        audit = env.audit()
        assert sorted(r["channel_id"] for r in audit) == sorted(leaked)
        for r in audit:
            assert r["run_id"] == report.run_id and r["reason"] == "empty_aged"
            assert r["dry_run"] is False and r["trigger"] == "test"
            assert r["created_at"] == snowflake_time(int(r["channel_id"]))
            assert r["name"].startswith("cdp-chat-")
        assert env.sample(
            "cdpmon_channels_deleted_total", guild=str(GUILD), reason="empty_aged"
        ) == len(leaked)
        assert env.sample("cdpmon_reconcile_runs_total", result="ok") == 1
        assert env.sample("cdpmon_reconcile_last_success_timestamp_seconds") > 0
        # One GET per channel just before its DELETE, and one listing.
        assert env.requests("GET /channels/{channel_id}") == len(leaked)
        assert env.requests("DELETE /channels/{channel_id}") == len(leaked)
        assert env.requests("GET /guilds/{guild_id}/channels") == 1


async def test_message_between_plan_and_delete_keeps_the_channel(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked, _ = await seed_mix(env)
        p = await env.rec.make_plan()
        spoken = leaked[2]
        assert await env.post_message(spoken) == 200
        report = await env.rec.apply(p, trigger="test")
        assert spoken in env.channel_ids()
        assert sorted(d["id"] for d in report.deleted) == sorted(set(leaked) - {spoken})
        kept = [s for s in report.skipped if s["id"] == spoken]
        assert len(kept) == 1 and "a message arrived" in kept[0]["why"]
        assert spoken not in {r["channel_id"] for r in env.audit()}
        assert env.requests("DELETE /channels/{channel_id}") == len(leaked) - 1


async def test_channel_gone_mid_run_is_not_an_error(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked, _ = await seed_mix(env)
        p = await env.rec.make_plan()
        gone = leaked[0]
        await env.rest.delete_channel(gone)  # someone (CDP) deleted it meanwhile
        report = await env.rec.apply(p, trigger="test")
        assert report.result == "ok" and report.errors == []
        assert [g["id"] for g in report.gone] == [gone]
        assert gone not in {d["id"] for d in report.deleted}
        assert sorted(r["channel_id"] for r in env.audit()) == sorted(set(leaked) - {gone})


async def test_dry_run_deletes_nothing_but_audits_each_decision(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked, traps = await seed_mix(env)
        report = await env.rec.run(dry_run=True, trigger="test")
        assert report.result == "dry_run" and report.dry_run
        assert report.deleted == []
        assert sorted(a["id"] for a in report.planned) == sorted(leaked)
        assert env.channel_ids() == set(leaked) | set(traps)
        audit = env.audit()
        assert sorted(r["channel_id"] for r in audit) == sorted(leaked)
        assert all(r["dry_run"] is True for r in audit)
        assert env.requests("DELETE /channels/{channel_id}") == 0
        assert env.sample("cdpmon_reconcile_runs_total", result="dry_run") == 1
        text = format_report(report)
        assert "would delete" in text and leaked[0] in text


async def test_config_dry_run_and_disabled_force_dry_runs(tmp_path: Path) -> None:
    for forcing, note in (
        (cfg(dry_run=True), "reconcile.dry_run is true"),
        (cfg(enabled=False), "reconcile.enabled is false"),
    ):
        async with sim_env(tmp_path / note[:18], settings=forcing) as env:
            leaked = await env.seed(3, age=HOUR)
            report = await env.rec.run(dry_run=False, trigger="test")
            assert report.dry_run and report.deleted == []
            assert any(note in n for n in report.notes)
            assert set(leaked) <= env.channel_ids()


async def test_concurrent_runs_of_one_mode_share_one_listing(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked = await env.seed(4, age=HOUR)
        a, b = await asyncio.gather(env.rec.run(trigger="one"), env.rec.run(trigger="two"))
        assert a is b
        assert env.requests("GET /guilds/{guild_id}/channels") == 1
        assert sorted(d["id"] for d in a.deleted) == sorted(leaked)
        assert len(env.audit()) == len(leaked)
        # A dry run asked meanwhile waits for the live run, then runs on its own.
        more = await env.seed(2, age=HOUR)
        live, dry = await asyncio.gather(
            env.rec.run(trigger="live"), env.rec.run(dry_run=True, trigger="dry")
        )
        assert live.run_id != dry.run_id
        assert sorted(d["id"] for d in live.deleted) == sorted(more)
        assert dry.planned == [] and dry.started_at >= live.finished_at  # type: ignore[operator]


async def test_listing_failure_is_an_error_report(tmp_path: Path) -> None:
    async with sim_env(tmp_path, client_token="revoked") as env:
        report = await env.rec.run(trigger="test")
        assert report.result == "error"
        assert "listing" in report.errors[0]["error"]
        assert env.sample("cdpmon_reconcile_runs_total", result="error") == 1
        assert env.audit() == []
        assert "error" in format_report(report)


async def test_token_rejected_mid_run_stops_the_run(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked = await env.seed(5, age=HOUR)
        p = await env.rec.make_plan()
        env.sim.settings = SimSettings(token="rotated")  # the token was reset meanwhile
        env.sim.state.settings = env.sim.settings
        rec = Reconciler(
            cfg(),
            guild_id=GUILD,
            channel_limit=500,
            rest=env.rest,
            ledger=None,
            state_dir=env.state_dir,
            metrics=env.metrics,
            clock=env.clock,
            concurrency=1,
        )
        report = await rec.apply(p, trigger="test")
        assert report.deleted == [] and report.result == "error"
        assert set(leaked) <= env.channel_ids()
        assert env.requests("GET /channels/{channel_id}") == 1  # then it stopped asking
        assert sum("rejected the token" in s["why"] for s in report.skipped) == 4


async def test_audit_failure_stops_deleting(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        leaked = await env.seed(5, age=HOUR)
        p = await env.rec.make_plan()
        rec = Reconciler(
            cfg(),
            guild_id=GUILD,
            channel_limit=500,
            rest=env.rest,
            ledger=None,
            state_dir=_BrokenStateDir(tmp_path / "broken"),
            metrics=env.metrics,
            clock=env.clock,
            concurrency=1,
        )
        report = await rec.apply(p, trigger="test")
        assert len(report.deleted) == 1  # the one whose audit line failed
        assert any("audit log" in e["error"] for e in report.errors)
        assert len(set(leaked) & env.channel_ids()) == 4
        assert report.result == "partial"


class _BrokenStateDir(StateDir):
    def append_audit(self, record: Any) -> None:
        from monitor.errors import StateError

        raise StateError("disk full", path=str(self.path / "audit.jsonl"))


async def test_ledger_failed_late_channels_are_deleted_young(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        env.ledger.opened("Req1", env.clock.time())
        env.ledger.failed("Req1", env.clock.time())
        env.ledger.opened("req2", env.clock.time())
        late = await env.seed(3, names=["cdp-chat-req1"] * 3)  # three attempts, all late
        running = await env.seed(1, names=["cdp-chat-REQ2"])
        report = await env.rec.run(trigger="test")
        assert sorted(d["id"] for d in report.deleted) == sorted(late)
        assert {d["reason"] for d in report.deleted} == {"ledger_failed"}
        assert env.channel_ids() == set(running)


async def test_census_metrics_and_status(tmp_path: Path) -> None:
    async with sim_env(tmp_path, channel_limit=100) as env:
        await env.seed(3, age=HOUR)
        await env.seed(2, age=MIN)
        await env.seed(4, age=MIN, messages=1)
        await env.seed(1, age=HOUR, prefix="general-")
        c = await env.rec.census()
        g = str(GUILD)
        assert env.sample("cdpmon_guild_channels", guild=g) == 10
        assert env.sample("cdpmon_guild_channel_limit", guild=g) == 100
        for state, n in (("active", 4), ("empty", 2), ("stale", 0), ("leaked", 3)):
            assert env.sample("cdpmon_temp_channels", guild=g, state=state) == n
        assert env.sample("cdpmon_guild_channel_exhaustion_seconds", guild=g) == math.inf
        # A cached census does not list again, nor does one asked within the list spacing.
        assert await env.rec.census() is c
        assert await env.rec.census(max_age=0) is c
        assert env.requests("GET /guilds/{guild_id}/channels") == 1
        # Growth: 10 more channels per minute -> 80 to go = 8 minutes.
        env.clock.advance(60)
        await env.seed(10, age=0, messages=1)
        await env.rec.census(max_age=0)
        assert env.requests("GET /guilds/{guild_id}/channels") == 2
        assert env.sample("cdpmon_guild_channel_exhaustion_seconds", guild=g) == pytest.approx(
            480.0, rel=0.01
        )
        status = env.rec.status()
        assert status["channels"]["channels"] == 20
        assert status["reconcile"]["last_run"] is None
        await env.rec.run(trigger="test")
        status = env.rec.status()
        assert status["reconcile"]["last_run"]["deleted"] == 3
        assert status["channels"]["channels"] == 17  # adjusted without listing again
        json.dumps(status)  # JSON-ready


async def test_emergency_guild_at_490_of_500_is_brought_under_the_watermark(
    tmp_path: Path,
) -> None:
    """Breaker open, guild nearly full: the loop's trigger is the emergency, and runs clear
    the guild below the high watermark using emergency_min_age, touching no trap."""
    async with sim_env(tmp_path) as env:
        leaked = await env.seed(400, age=5 * MIN)  # too young for min_age, not for emergency
        traps = [
            *await env.seed(30, age=HOUR, messages=1),
            *await env.seed(20, age=MIN),  # younger than emergency_min_age
            *await env.seed(20, age=HOUR, prefix="general-"),
            *await env.seed(10, age=HOUR, type_=4),
            *await env.seed(10, age=HOUR, type_=2),
        ]
        protected = await env.seed(1, age=HOUR)
        traps += protected
        env.rec.reconfigure(cfg(protected_channel_ids=frozenset({int(protected[0])})))
        assert len(env.sim.state.channels) == 491

        def breaker() -> tuple[str, float]:
            return ("open", NOW)

        triggers = [await env.rec.step(breaker) for _ in range(3)]
        assert triggers[0] == "emergency"
        assert len(env.sim.state.channels) < 400  # below 80% of 500
        assert set(traps) <= env.channel_ids()
        deleted = {r["channel_id"] for r in env.audit()}
        assert deleted <= set(leaked)
        assert len(deleted) == 491 - len(env.sim.state.channels)
        assert env.rec.last_census is not None and not env.rec.last_census.above_watermark
        # Once under the watermark an open breaker means no more runs.
        assert triggers[-1] is None
        report = env.rec.last_report
        assert report is not None and report.emergency and report.errors == []
        # (429s are the benchmark's business: under a FakeClock concurrent sleepers push
        # the shared clock past their slots, so pacing is not comparable here.)


async def test_loop_runs_on_its_own(tmp_path: Path) -> None:
    # A FakeClock tick passes instantly: a long interval keeps later runs from replacing
    # the report we look at.
    async with sim_env(tmp_path, settings=cfg(settle_delay=0.0, interval=1e9)) as env:
        leaked = await env.seed(3, age=HOUR)
        task = asyncio.create_task(env.rec.loop(lambda: ("closed", NOW - HOUR), tick=1.0))
        try:
            # Waiting for the simulator's answers (real I/O), not for time-based logic.
            for _ in range(1000):
                if env.rec.last_report is not None:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        report = env.rec.last_report
        assert report is not None and report.trigger == "startup"
        assert sorted(d["id"] for d in report.deleted) == sorted(leaked)


async def test_reconcile_once_reads_the_daemon_ledger(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    sim = DiscordSimulator(SimSettings(), clock=clock)
    await sim.start("127.0.0.1", 0)
    try:
        state = tmp_path / "state"
        ledger = RequestLedger(state_dir=StateDir(state), clock=clock)
        ledger.failed("abc", NOW)
        ledger.flush()
        sim.add_channel("cdp-chat-abc", age_seconds=1)  # a late channel of a failed request
        sim.add_channel("cdp-chat-young", age_seconds=1)
        config = parse_config(
            f"discord:\n  token: {sim.settings.token}\n  guild_id: {GUILD}\n"
            f"  api_base: {sim.api_base}\nstate_dir: {state}\n"
        )
        async with aiohttp.ClientSession() as http:
            dry = await reconcile_once(config, dry_run=True, session=http, clock=clock)
            assert [a["name"] for a in dry.planned] == ["cdp-chat-abc"]
            assert len(sim.state.channels) == 2
            live = await reconcile_once(config, dry_run=False, session=http, clock=clock)
        assert [d["name"] for d in live.deleted] == ["cdp-chat-abc"]
        assert [c.name for c in sim.state.channels.values()] == ["cdp-chat-young"]
        assert [r["dry_run"] for r in StateDir(state).read_audit()] == [True, False]
        assert (state / LEDGER_FILE).exists()
        text = format_report(live)
        assert "deleted:" in text and "cdp-chat-abc" in text and "ledger_failed" in text
    finally:
        await sim.stop()


# -- property tests against the simulator -----------------------------------------------------

AGES = [0.0, 60.0, 300.0, 900.0, 7200.0, 3 * 86_400.0]  # margins of >= 60s around thresholds
LEDGER_STATES = [None, "open", "completed_recent", "completed_old", "failed"]
KINDS = ["cdp", "cdp_old", "other_text", "category", "voice", "announcement"]
KIND_TYPE = {
    "cdp": 0,
    "cdp_old": 0,
    "other_text": 0,
    "category": 4,
    "voice": 2,
    "announcement": 5,
}
OTHER_NAMES = ["general", "x-cdp-chat-{rid}", "cdp-chatter-{rid}", "cdpchat-{rid}"]
PROP_SETTINGS = dict(
    min_age=600.0, emergency_min_age=120.0, cdp_auto_delete=5.0, ledger_grace=120.0
)


@dataclass(frozen=True)
class Spec:
    kind: str
    age: float
    messages: int
    msg_age: float
    protected: bool
    ledger: str | None
    poke: bool  # someone speaks in it while the run is under way
    other: int
    upper_rid: bool


# Weighted toward channels the rules may delete, so most examples delete something.
specs_strategy = st.lists(
    st.builds(
        Spec,
        kind=st.sampled_from(["cdp", "cdp", "cdp", "cdp_old", *KINDS[2:]]),
        age=st.sampled_from(AGES),
        messages=st.sampled_from([0, 0, 1, 2]),
        msg_age=st.sampled_from(AGES),
        protected=st.sampled_from([False, False, False, True]),
        ledger=st.sampled_from([None, None, *LEDGER_STATES[1:]]),
        poke=st.sampled_from([False, False, True]),
        other=st.integers(0, len(OTHER_NAMES) - 1),
        upper_rid=st.booleans(),
    ),
    min_size=1,
    max_size=20,
)


def oracle(spec: Spec, stale_after: float | None, min_age: float) -> str | None:
    """The rules, restated from the spec (not from the planner's code)."""
    if spec.kind not in ("cdp", "cdp_old") or spec.protected:
        return None
    if spec.ledger == "open" or spec.ledger == "completed_recent":
        return None
    if spec.ledger == "failed":
        return "ledger_failed"
    if spec.ledger == "completed_old":
        return "ledger_completed"
    if spec.messages == 0:
        return "empty_aged" if spec.age > min_age else None
    last = min(spec.msg_age, spec.age)
    if stale_after is not None and last > stale_after and spec.age > min_age:
        return "stale"
    return None


class RecordingRest:
    """The real client, with a global order of events for the race assertions."""

    def __init__(self, rest: DiscordRestClient, order: itertools.count[int]) -> None:
        self._rest = rest
        self._order = order
        self.listed = asyncio.Event()
        self.get_sent: dict[str, int] = {}

    async def list_guild_channels(self, guild_id: int | str) -> Any:
        result = await self._rest.list_guild_channels(guild_id)
        self.listed.set()
        return result

    async def get_channel(self, channel_id: int | str) -> Any:
        self.get_sent[str(channel_id)] = next(self._order)
        return await self._rest.get_channel(channel_id)

    async def delete_channel(self, channel_id: int | str) -> Any:
        return await self._rest.delete_channel(channel_id)


FAST_LIMITS = {
    key: RouteLimit(limit.bucket, 10_000, limit.per) for key, limit in DEFAULT_ROUTE_LIMITS.items()
}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=specs_strategy,
    stale_after=st.sampled_from([None, 3600.0]),
    cap=st.sampled_from([1, 3, 100]),
    emergency=st.booleans(),
    seed=st.integers(0, 2**16),
)
async def test_property_only_and_all_allowed_channels_are_deleted(
    tmp_path_factory: pytest.TempPathFactory,
    specs: list[Spec],
    stale_after: float | None,
    cap: int,
    emergency: bool,
    seed: int,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    clock = FakeClock(NOW)
    rng = random.Random(seed)
    ledger = RequestLedger(state_dir=None, clock=clock)
    sim = DiscordSimulator(SimSettings(global_limit=100_000, route_limits=FAST_LIMITS), clock=clock)
    await sim.start("127.0.0.1", 0)
    try:
        by_id: dict[str, Spec] = {}
        for i, spec in enumerate(specs):
            rid = f"r{i}q{seed}"
            if spec.kind == "cdp":
                name = f"cdp-chat-{rid}"
            elif spec.kind == "cdp_old":
                name = f"cdp-对话-{rid}"
            elif spec.kind == "other_text":
                name = OTHER_NAMES[spec.other].format(rid=rid)
            else:
                name = f"cdp-chat-{rid}"  # a non-text channel with a temporary-looking name
            channel = sim.add_channel(name, KIND_TYPE[spec.kind], age_seconds=spec.age)
            for j in range(spec.messages if KIND_TYPE[spec.kind] in (0, 5) else 0):
                at = NOW - min(spec.msg_age, spec.age) - (spec.messages - 1 - j) * 0.001
                channel.messages.append(Message(sim.new_id(max(at, NOW - spec.age)), "x", 1, "u"))
            ledger_id = rid.upper() if spec.upper_rid else rid
            if spec.ledger == "open":
                # Just started, or a stream open for hours: open protects either way.
                ledger.opened(ledger_id, NOW - rng.choice([30, 7200]))
            elif spec.ledger == "completed_recent":
                ledger.opened(ledger_id, NOW - 60)
                ledger.completed(ledger_id, NOW - 10)
            elif spec.ledger == "completed_old":
                ledger.opened(ledger_id, NOW - 2000)
                ledger.completed(ledger_id, NOW - 1000)
            elif spec.ledger == "failed":
                ledger.failed(ledger_id, NOW - 5)
            by_id[str(channel.id)] = spec
        protected = frozenset(int(cid) for cid, s in by_id.items() if s.protected)
        s = cfg(
            stale_after=stale_after,
            max_deletes_per_run=cap,
            protected_channel_ids=protected,
            **PROP_SETTINGS,
        )
        limit = len(specs) if emergency else 500
        min_age = 120.0 if len(specs) >= 0.8 * limit else 600.0
        expected = sorted(
            (cid for cid, spec in by_id.items() if oracle(spec, stale_after, min_age)),
            key=int,
        )[:cap]

        order = itertools.count()
        async with aiohttp.ClientSession() as http:
            rest = DiscordRestClient(
                session=http,
                metrics=Metrics(CollectorRegistry()),
                token=sim.settings.token,
                api_base=sim.api_base,
                clock=clock,
                global_rate=10_000.0,
            )
            recording = RecordingRest(rest, order)
            state_dir = StateDir(tmp / "state")
            rec = Reconciler(
                s,
                guild_id=sim.settings.guild_id,
                channel_limit=limit,
                rest=recording,
                ledger=ledger,
                state_dir=state_dir,
                metrics=Metrics(CollectorRegistry()),
                clock=clock,
                concurrency=rng.choice([1, 4, 16]),
            )
            poked = [cid for cid, spec in by_id.items() if spec.poke]
            poke_done: dict[str, int] = {}

            async def speak(cid: str, run: asyncio.Task[Any]) -> None:
                await recording.listed.wait()  # the plan sees the guild as specified
                when = rng.choice(["at_once", "at_its_recheck", "later"])
                after = rng.randrange(len(specs) + 1)
                while not run.done() and not (
                    when == "at_once"
                    or (when == "at_its_recheck" and cid in recording.get_sent)
                    or (when == "later" and len(recording.get_sent) >= after)
                ):
                    await asyncio.sleep(0)
                url = f"{sim.admin_url}/channels/{cid}/messages"
                async with http.post(url, json={"content": "hello"}) as resp:
                    if resp.status == 200:
                        poke_done[cid] = next(order)

            run = asyncio.create_task(rec.run(trigger="property"))
            await asyncio.gather(*(speak(cid, run) for cid in poked))
            report = await run

        planned = [a["id"] for a in report.planned]
        deleted = {d["id"] for d in report.deleted}
        remaining = {str(c) for c in sim.state.channels}
        audit = list(state_dir.read_audit())

        # Everything the rules allow, up to the cap, oldest first, is planned.
        assert planned == expected
        assert report.errors == [] and report.gone == []
        for cid in by_id:
            spec = by_id[cid]
            if cid in deleted:
                # Nothing outside the rules: allowed by them, planned, and not spoken in
                # before the re-check asked Discord about it.
                assert oracle(spec, stale_after, min_age) is not None
                assert cid in planned
                assert cid not in poke_done or poke_done[cid] > recording.get_sent[cid]
                assert cid not in remaining
            else:
                assert cid in remaining
                # Planned and not deleted only because someone spoke in it meanwhile.
                assert cid not in planned or spec.poke
        # Deleted unless someone spoke in it.
        assert {cid for cid in planned if not by_id[cid].poke} <= deleted
        # One audit line per deletion, with the reason the rules give.
        assert sorted(r["channel_id"] for r in audit) == sorted(deleted)
        for r in audit:
            assert r["reason"] == oracle(by_id[r["channel_id"]], stale_after, min_age)
            assert r["dry_run"] is False
    finally:
        await sim.stop()
