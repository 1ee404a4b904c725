"""Reload: every `reconcile` key changes what a running reconciler does after
`reconfigure`, proven per key against an in-memory guild on a FakeClock (no sleeping).

Each case runs the same scenario three times: on the old settings, on the old settings
reconfigured to the new ones after the reconciler has started working, and on the new
settings from the start. The reloaded one must behave like the new, not like the old.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.config import CdpConfig, ReconcileConfig
from monitor.ledger import RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler
from monitor.reconcile.rules import Activity
from monitor.state import StateDir
from tests.helpers.reconcile import GUILD, HOUR, MIN, NOW, cfg, chan, sf


class MemoryGuild:
    """The three REST calls the reconciler makes, answered from a dict; counts listings."""

    def __init__(self, channels: list[dict[str, Any]]) -> None:
        self.channels = {c["id"]: copy.deepcopy(c) for c in channels}
        self.listings = 0

    async def list_guild_channels(self, guild_id: int | str) -> Any:
        self.listings += 1
        return [copy.deepcopy(c) for c in self.channels.values()]

    async def get_channel(self, channel_id: int | str) -> Any:
        return copy.deepcopy(self.channels[str(channel_id)])

    async def delete_channel(self, channel_id: int | str) -> Any:
        del self.channels[str(channel_id)]


@dataclass
class Env:
    rec: Reconciler
    guild: MemoryGuild
    clock: FakeClock


Step = Callable[[Env], Awaitable[Any]]


def breaker(state: str, since: float = NOW - HOUR) -> Callable[[], tuple[str, float]]:
    return lambda: (state, since)


async def list_once(env: Env) -> None:
    await env.rec.census()


async def run_once(env: Env) -> tuple[list[str], bool, bool]:
    """What a run deletes (by name), whether it was an emergency, whether it was dry."""
    report = await env.rec.run(trigger="test")
    return sorted(d["name"] for d in report.deleted), report.emergency, report.dry_run


def step_after(seconds: float, state: str, since: float = NOW - HOUR) -> Step:
    """Advance the clock, take one step of the loop: the trigger it ran."""

    async def probe(env: Env) -> Any:
        env.clock.advance(seconds)
        return await env.rec.step(breaker(state, since))

    return probe


def listings_after(seconds: float) -> Step:
    """Advance the clock, take one step with the breaker open: how often the guild was
    listed in all (the census is the only reason to list)."""

    async def probe(env: Env) -> int:
        env.clock.advance(seconds)
        await env.rec.step(breaker("open"))
        return env.guild.listings

    return probe


async def startup_run(env: Env) -> None:
    await env.rec.step(breaker("closed"))


def completed_request(ledger: RequestLedger) -> None:
    ledger.opened("aaa", NOW - 400)
    ledger.completed("aaa", NOW - 200)  # past cdp.auto_delete 5s + ledger_grace 120s


PROTECTED = sf(HOUR)


@dataclass
class Case:
    change: Any  # the key's new value
    base: dict[str, Any] = field(default_factory=dict)  # settings before, besides defaults
    channels: list[dict[str, Any]] = field(default_factory=lambda: [chan(HOUR, "cdp-chat-a")])
    limit: int = 500
    ledger: Callable[[RequestLedger], None] | None = None
    start: Step = list_once  # what the reconciler does before the reload
    probe: Step = run_once  # what it does after


CASES: dict[str, Case] = {
    "enabled": Case(False),
    "dry_run": Case(True),
    "interval": Case(100.0, start=startup_run, probe=step_after(200, "closed")),
    "name_pattern": Case(r"^tmp-", channels=[chan(HOUR, "cdp-chat-a"), chan(HOUR, "tmp-b")]),
    "protected_channel_ids": Case(
        frozenset({PROTECTED}), channels=[chan(HOUR, "cdp-chat-p", cid=PROTECTED)]
    ),
    "min_age": Case(2 * MIN, base={"emergency_min_age": MIN}, channels=[chan(5 * MIN)]),
    "emergency_min_age": Case(
        2 * MIN,
        base={"emergency_min_age": 10 * MIN},
        channels=[chan(5 * MIN, "cdp-chat-a"), chan(5 * MIN, "cdp-chat-b")],
        limit=2,
    ),
    "max_deletes_per_run": Case(1, channels=[chan(HOUR + i, f"cdp-chat-{i}") for i in range(3)]),
    "high_watermark": Case(
        0.5, channels=[chan(5 * MIN, "cdp-chat-a"), chan(5 * MIN, "cdp-chat-b")], limit=4
    ),
    "stale_after": Case(30 * MIN, channels=[chan(2 * HOUR, last_msg_age=HOUR)]),
    "settle_delay": Case(2 * MIN, probe=step_after(0, "closed", since=NOW - MIN)),
    "ledger_grace": Case(300.0, channels=[chan(5 * MIN, "cdp-chat-aaa")], ledger=completed_request),
    "census_interval": Case(5 * MIN, probe=listings_after(100)),
    "list_spacing": Case(MIN, base={"census_interval": 10.0}, probe=listings_after(40)),
}


def test_every_reconcile_key_has_a_reload_case() -> None:
    assert set(CASES) == set(ReconcileConfig.model_fields)


async def outcome(
    case: Case, settings: ReconcileConfig, tmp: Path, *, reload_to: ReconcileConfig | None
) -> Any:
    clock = FakeClock(NOW)
    ledger = RequestLedger(state_dir=None, clock=clock)
    if case.ledger is not None:
        case.ledger(ledger)
    guild = MemoryGuild(case.channels)
    rec = Reconciler(
        settings,
        guild_id=GUILD,
        channel_limit=case.limit,
        rest=guild,
        ledger=ledger,
        state_dir=StateDir(tmp),
        metrics=Metrics(CollectorRegistry()),
        clock=clock,
        activity=lambda: Activity(inflight_creates=0),  # the gate has nothing in flight
    )
    env = Env(rec, guild, clock)
    await case.start(env)
    if reload_to is not None:
        env.rec.reconfigure(reload_to)
    return await case.probe(env)


@pytest.mark.parametrize("key", sorted(CASES))
async def test_reload_changes_the_running_reconciler(key: str, tmp_path: Path) -> None:
    case = CASES[key]
    old = cfg(**case.base)
    new = cfg(**{**case.base, key: case.change})
    before = await outcome(case, old, tmp_path / "old", reload_to=None)
    reloaded = await outcome(case, old, tmp_path / "reloaded", reload_to=new)
    fresh = await outcome(case, new, tmp_path / "new", reload_to=None)
    assert reloaded == fresh
    assert reloaded != before


async def test_reload_of_cdp_auto_delete_applies_to_the_next_run(tmp_path: Path) -> None:
    # A completed request's channel: CDP's own delete is overdue at 5 s, not at `never`.
    async def deleted(cdp: CdpConfig | None, reload_to: CdpConfig | None) -> list[str]:
        clock = FakeClock(NOW)
        ledger = RequestLedger(state_dir=None, clock=clock)
        completed_request(ledger)
        guild = MemoryGuild([chan(5 * MIN, "cdp-chat-aaa", last_msg_age=250)])
        rec = Reconciler(
            cfg(),
            guild_id=GUILD,
            channel_limit=500,
            rest=guild,
            ledger=ledger,
            state_dir=StateDir(tmp_path / str(id(clock))),
            metrics=Metrics(CollectorRegistry()),
            clock=clock,
            cdp=cdp,
        )
        if reload_to is not None:
            rec.reconfigure(cfg(), cdp=reload_to)
        report = await rec.run(trigger="test")
        return [d["reason"] for d in report.deleted]

    never = CdpConfig(auto_delete="never")
    assert await deleted(None, None) == ["ledger_completed"]
    assert await deleted(never, None) == []
    assert await deleted(None, never) == []
    assert await deleted(never, CdpConfig()) == ["ledger_completed"]
