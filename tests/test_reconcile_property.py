"""Property tests against the Discord simulator: only and all the channels the rules
allow are deleted, with messages arriving while a run is under way."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.discord.rest import DiscordRestClient
from monitor.ledger import RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler
from monitor.sim.discord import (
    DEFAULT_ROUTE_LIMITS,
    DiscordSimulator,
    Message,
    RouteLimit,
    SimSettings,
)
from monitor.state import StateDir
from tests.helpers.reconcile import NOW, cfg

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
    min_age=600.0,
    emergency_min_age=120.0,
    cdp_auto_delete=5.0,
    ledger_grace=120.0,
    name_pattern=r"^cdp-(chat-|对话)",  # CDP's real prefixes, legacy `cdp-对话<rid>` too
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
                name = f"cdp-对话{rid}"
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
                max_retries=3,
                timeout=10.0,
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
        audit = [r for r in state_dir.read_audit() if r["event"] == "deleted"]

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
