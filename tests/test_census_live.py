"""The reconciler with the gateway session's live state: it plans from the live channels
while they are current (no listing), still re-checks each channel over REST before
deleting it, and lists again after a gap; the census says where its numbers came from."""

from __future__ import annotations

from pathlib import Path

from monitor.discord.session_creations import CreationWindow
from monitor.discord.session_live import LiveGuild
from monitor.reconcile import Reconciler
from tests.helpers.metrics import sample
from tests.helpers.reconcile import HOUR
from tests.test_reconcile_run import sim_env

LISTING = "GET /guilds/{guild_id}/channels"


async def test_plans_from_live_state_and_rechecks_each_channel(tmp_path: Path) -> None:
    async with sim_env(tmp_path) as env:
        live = LiveGuild(
            env.sim.settings.guild_id,
            creations=CreationWindow(),
            metrics=env.metrics,
            daily_create_limit=500,
            resync_interval=HOUR,
        )
        rec = Reconciler(
            env.rec.settings,
            guild_id=env.sim.settings.guild_id,
            channel_limit=500,
            rest=env.rest,
            ledger=env.ledger,
            state_dir=env.state_dir,
            metrics=env.metrics,
            clock=env.clock,
            live=live,
        )
        guild = str(env.sim.settings.guild_id)
        first = await env.seed(3, age=2 * HOUR)
        live.session_up(resumed=False)
        live.dispatch("GUILD_CREATE", {"id": guild, "channels": []}, env.clock.time())
        census = await rec.census(max_age=0.0)
        assert census.channels == 3 and env.requests(LISTING) == 1
        assert rec.status()["channels"]["source"] == "rest"
        # Two more appear while the session is up: known from events, not from a listing.
        later = await env.seed(2, age=2 * HOUR)
        for cid in later:
            name = env.sim.state.channels[int(cid)].name
            raw = {"id": cid, "guild_id": guild, "name": name, "type": 0}
            live.dispatch("CHANNEL_CREATE", raw, env.clock.time())
        assert sample(env.metrics.registry, "cdpmon_guild_channels", guild=guild) == 5
        env.clock.advance(120)
        report = await rec.run(trigger="test")
        assert sorted(d["id"] for d in report.deleted) == sorted(first + later)
        assert env.requests(LISTING) == 1  # planned from the live state
        assert env.requests("GET /channels/{channel_id}") == 5  # each re-checked first
        assert env.requests("DELETE /channels/{channel_id}") == 5
        env.clock.advance(120)
        await rec.census(max_age=0.0)
        status = rec.status()["channels"]
        assert status["source"] == "gateway" and status["live"]["current"]
        # A gap: the next census lists again.
        live.session_down()
        env.clock.advance(120)
        await rec.census(max_age=0.0)
        assert env.requests(LISTING) == 2
        assert rec.status()["channels"]["source"] == "rest"
