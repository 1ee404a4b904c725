"""Reconcile runs against the Discord simulator: apply, re-check, audit, census, loop."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.config import ReconcileConfig, parse_config
from monitor.discord.rest import DiscordRestClient
from monitor.discord.snowflake import snowflake_time
from monitor.ledger import LEDGER_FILE, RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler, format_report
from monitor.reconcile.rules import Activity
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.state import StateDir
from monitor.wiring import reconcile_once
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import sample_or_zero
from tests.helpers.reconcile import GUILD, HOUR, MIN, NOW, cfg, ids
from tests.helpers.sim import seed
from tests.helpers.wait import wait_for

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
                max_retries=3,
                timeout=10.0,
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

    def audit(self, *events: str) -> list[dict[str, Any]]:
        """The audit lines of these events (default: the outcomes, deleted or dry run)."""
        wanted = events or ("deleted", "dry_run")
        return [r for r in self.state_dir.read_audit() if r["event"] in wanted]

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
        # Each deletion's intent line precedes it, and nothing else was written.
        lines = [(r["event"], r["channel_id"]) for r in env.state_dir.read_audit()]
        assert len(lines) == 2 * len(leaked)
        for cid in leaked:
            assert lines.index(("intent", cid)) < lines.index(("deleted", cid))
        for r in audit:
            assert r["run_id"] == report.run_id and r["reason"] == "empty_aged"
            assert r["dry_run"] is False and r["trigger"] == "test"
            assert r["created_at"] == snowflake_time(int(r["channel_id"]))
            assert r["name"].startswith("cdp-chat-")
        assert sample_or_zero(
            env.metrics.registry,
            "cdpmon_channels_deleted_total",
            guild=str(GUILD),
            reason="empty_aged",
        ) == len(leaked)
        assert sample_or_zero(env.metrics.registry, "cdpmon_reconcile_runs_total", result="ok") == 1
        assert (
            sample_or_zero(env.metrics.registry, "cdpmon_reconcile_last_success_timestamp_seconds")
            > 0
        )
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
        assert (
            sample_or_zero(env.metrics.registry, "cdpmon_reconcile_runs_total", result="dry_run")
            == 1
        )
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


async def test_200_concurrent_dry_runs_list_the_guild_at_most_twice(tmp_path: Path) -> None:
    # Red team: 200 concurrent POST /reconcile sent 129-200 guild listings to Discord.
    async with sim_env(tmp_path) as env:
        leaked = await env.seed(1, age=HOUR)
        reports = await asyncio.gather(
            *(env.rec.run(dry_run=True, trigger="api") for _ in range(200))
        )
        assert env.requests("GET /guilds/{guild_id}/channels") <= 2
        assert all(sorted(a["id"] for a in r.planned) == sorted(leaked) for r in reports)
        # Arriving one after another (each run over before the next asks) within the
        # listing's reuse: still one listing, and a live run after them plans from it too.
        for _ in range(50):
            env.clock.advance(0.05)
            await env.rec.run(dry_run=True, trigger="api")
        assert env.requests("GET /guilds/{guild_id}/channels") <= 2
        live = await env.rec.run(trigger="api")
        assert sorted(d["id"] for d in live.deleted) == sorted(leaked)
        # Deletions make the listing stale: the next run lists again.
        before = env.requests("GET /guilds/{guild_id}/channels")
        await env.rec.run(dry_run=True, trigger="api")
        assert env.requests("GET /guilds/{guild_id}/channels") == before + 1


async def test_listing_failure_is_an_error_report(tmp_path: Path) -> None:
    async with sim_env(tmp_path, client_token="revoked") as env:
        report = await env.rec.run(trigger="test")
        assert report.result == "error"
        assert "listing" in report.errors[0]["error"]
        assert (
            sample_or_zero(env.metrics.registry, "cdpmon_reconcile_runs_total", result="error") == 1
        )
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


async def _run_with_unwritable_audit(env: Env, break_it: Callable[[], None]) -> None:
    leaked = await env.seed(20, age=HOUR)
    break_it()
    for n in (1, 2):  # run after run: nothing deleted, each run an error, no exception
        report = await env.rec.run(trigger="test")
        assert report.result == "error" and report.deleted == []
        assert report.error is not None and "audit log" in report.error
        assert "audit log" in format_report(report)
        assert env.requests("DELETE /channels/{channel_id}") == 0
        assert set(leaked) <= env.channel_ids()
        assert (
            sample_or_zero(env.metrics.registry, "cdpmon_reconcile_runs_total", result="error") == n
        )
        assert env.rec.status()["reconcile"]["last_run"]["error"] == report.error


async def test_state_dir_replaced_by_a_file_deletes_nothing(tmp_path: Path) -> None:
    # Red team: with the state dir unwritable each run deleted 16 channels unaudited.
    async with sim_env(tmp_path) as env:

        def break_it() -> None:
            shutil.rmtree(env.state_dir.path)
            env.state_dir.path.write_text("not a directory")

        await _run_with_unwritable_audit(env, break_it)
        env.state_dir.path.unlink()
        env.state_dir.path.mkdir()
        report = await env.rec.run(trigger="test")  # fixed: the next run cleans up
        assert report.result == "ok" and len(report.deleted) == 20
        assert len(env.audit("intent")) == len(env.audit("deleted")) == 20


async def test_disk_full_on_fsync_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enospc(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async with sim_env(tmp_path) as env:
        await _run_with_unwritable_audit(env, lambda: monkeypatch.setattr(os, "fsync", enospc))


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
        assert sample_or_zero(env.metrics.registry, "cdpmon_guild_channels", guild=g) == 10
        assert sample_or_zero(env.metrics.registry, "cdpmon_guild_channel_limit", guild=g) == 100
        for state, n in (("active", 4), ("empty", 2), ("stale", 0), ("leaked", 3)):
            assert (
                sample_or_zero(env.metrics.registry, "cdpmon_temp_channels", guild=g, state=state)
                == n
            )
        assert (
            sample_or_zero(env.metrics.registry, "cdpmon_guild_channel_exhaustion_seconds", guild=g)
            == math.inf
        )
        # A cached census does not list again, nor does one asked within the list spacing.
        assert await env.rec.census() is c
        assert await env.rec.census(max_age=0) is c
        assert env.requests("GET /guilds/{guild_id}/channels") == 1
        # Growth: 10 more channels per minute -> 80 to go = 8 minutes.
        env.clock.advance(60)
        await env.seed(10, age=0, messages=1)
        await env.rec.census(max_age=0)
        assert env.requests("GET /guilds/{guild_id}/channels") == 2
        assert sample_or_zero(
            env.metrics.registry, "cdpmon_guild_channel_exhaustion_seconds", guild=g
        ) == pytest.approx(480.0, rel=0.01)
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

        # Age alone is no evidence above the watermark: while the gate has a create in
        # flight, a young empty channel may be its (CDP's prompt post has no timeout).
        env.rec.activity = lambda: Activity(inflight_creates=2)
        assert await env.rec.step(breaker) == "emergency"
        assert len(env.sim.state.channels) == 491
        env.rec.activity = lambda: Activity(inflight_creates=0)  # nothing in flight
        env.clock.advance(cfg().list_spacing)  # a run that deleted nothing is retried then
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
            await wait_for(lambda: env.rec.last_report is not None, what="the first report")
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
        assert [r["event"] for r in StateDir(state).read_audit()] == [
            "dry_run",
            "intent",
            "deleted",
        ]
        assert (state / LEDGER_FILE).exists()
        text = format_report(live)
        assert "deleted:" in text and "cdp-chat-abc" in text and "ledger_failed" in text
    finally:
        await sim.stop()


async def test_200_concurrent_post_reconcile_list_the_guild_at_most_twice(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The red team's reproduction, through the control API of a running daemon.
    await seed(http, discord_sim, count=2, age_seconds=3600)
    timers = {"interval": "1h", "census_interval": "1h", "list_spacing": "1h"}
    config = fast_config(discord_sim, tmp_path / "state", reconcile={"enabled": True, **timers})
    route = ("GET /guilds/{guild_id}/channels", 200)
    async with running_daemon(config) as daemon:
        before = discord_sim.state.requests[route]
        auth = {"Authorization": "Bearer control-secret"}

        # Fewer connections than control.max_connections (64): past it the listener sheds
        # connections by design, which is not what this test is about.
        connector = aiohttp.TCPConnector(limit=48)
        async with aiohttp.ClientSession(connector=connector) as capped:

            async def post() -> int:
                body = {"dry_run": True}
                url = f"{daemon.control_url}/reconcile"
                async with capped.post(url, json=body, headers=auth) as r:
                    assert (await r.json())["dry_run"] is True
                    return r.status

            assert set(await asyncio.gather(*(post() for _ in range(200)))) == {200}
        assert discord_sim.state.requests[route] - before <= 2


async def test_every_delete_that_reaches_discord_was_paced(tmp_path: Path) -> None:
    # Red team: aiohttp resends an idempotent request once, unseen by the limiter, when
    # the connection is reset: DELETEs peaked at 45/s against a configured 25/s.
    async with sim_env(tmp_path) as env:
        await env.seed(6, age=HOUR)
        url = f"{env.sim.admin_url}/faults"
        faults = {"reset_rate": 1.0, "routes": ["DELETE /channels/{channel_id}"]}
        async with env.http.put(url, json={"rest": faults}) as resp:
            assert resp.status == 200
        report = await env.rec.run(trigger="test")
        assert report.deleted == [] and report.errors
        received = sum(env.sim.state.requests.values())
        assert env.requests("DELETE /channels/{channel_id}") > 0
        assert received == env.rest.stats.sent  # one limiter slot per request Discord saw
