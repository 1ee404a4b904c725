"""The reconciler inside the daemon and from the command line, against the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, fast_config_dict, run_monitor, running_daemon
from tests.helpers.metrics import metric_value
from tests.helpers.sim import seed
from tests.helpers.wait import wait_for

AUTH = {"Authorization": "Bearer control-secret"}


def reconcile_extra(**reconcile: Any) -> dict[str, Any]:
    return {
        "reconcile": {
            "enabled": True,
            "interval": "1h",  # only on demand in these tests, unless a test says otherwise
            "min_age": "10m",
            "emergency_min_age": "1m",
            "census_interval": "200ms",
            "list_spacing": "200ms",
            **reconcile,
        }
    }


async def test_post_reconcile_dry_run_then_live_via_control_api(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    leaked = await seed(http, discord_sim, count=3, age_seconds=3600)
    young = await seed(http, discord_sim, count=2, age_seconds=10)
    busy = await seed(http, discord_sim, count=1, age_seconds=3600, messages=1)
    other = await seed(http, discord_sim, count=1, prefix="general-", age_seconds=3600)
    config = fast_config(discord_sim, tmp_path / "state", **reconcile_extra())
    async with running_daemon(config) as daemon:
        async with http.post(
            f"{daemon.control_url}/reconcile", json={"dry_run": True}, headers=AUTH
        ) as resp:
            report = await resp.json()
        assert resp.status == 200 and report["dry_run"] is True
        assert {a["id"] for a in report["planned"]} == set(leaked)
        assert len(discord_sim.state.channels) == 7  # a dry run deletes nothing

        async with http.post(f"{daemon.control_url}/reconcile", json={}, headers=AUTH) as resp:
            report = await resp.json()
        assert report["dry_run"] is False
        assert {d["id"] for d in report["deleted"]} == set(leaked)
        remaining = {str(c) for c in discord_sim.state.channels}
        assert remaining == set(young) | set(busy) | set(other)

        async with http.get(f"{daemon.control_url}/status", headers=AUTH) as resp:
            status = await resp.json()
        assert status["channels"]["channels"] == 4 and status["channels"]["limit"] == 500
        assert status["reconcile"] is not None
        deleted = metric_value(
            daemon.metrics.channels_deleted,
            guild=str(discord_sim.settings.guild_id),
            reason="empty_aged",
        )
        assert deleted == 3
    audit = [
        json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    ]
    assert sum(1 for a in audit if a["event"] == "deleted") == 3
    assert sum(1 for a in audit if a["dry_run"]) == 3


async def test_census_metrics_reach_metrics_endpoint(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await seed(http, discord_sim, count=5, age_seconds=30)
    config = fast_config(discord_sim, tmp_path / "state", **reconcile_extra())
    async with running_daemon(config) as daemon:
        guild = str(discord_sim.settings.guild_id)
        gauge = daemon.metrics.guild_channels
        await wait_for(lambda: metric_value(gauge, guild=guild) == 5, what="census")
        async with http.get(f"{daemon.control_url}/metrics") as resp:
            text = await resp.text()
    assert f'cdpmon_guild_channels{{guild="{guild}"}} 5.0' in text
    assert f'cdpmon_guild_channel_limit{{guild="{guild}"}} 500.0' in text


async def test_emergency_reconcile_runs_while_the_breaker_is_open(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await seed(http, discord_sim, count=450, age_seconds=600)
    keep = await seed(http, discord_sim, count=40, prefix="general-", age_seconds=600)
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        **reconcile_extra(high_watermark=0.9, max_deletes_per_run=500),
        discord={"global_rate": 45},
    )
    async with running_daemon(config) as daemon:
        await daemon.pause(3600, "keep it open")
        assert daemon.breaker.state == "forced_open"
        await wait_for(
            lambda: len(discord_sim.state.channels) <= 450, what="under the watermark", bound=60
        )
        assert daemon.breaker.state == "forced_open"
    assert set(keep) <= {str(c) for c in discord_sim.state.channels}


async def test_cli_reconcile_one_shot(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    leaked = await seed(http, discord_sim, count=2, age_seconds=3600)
    await seed(http, discord_sim, count=1, prefix="general-", age_seconds=3600)
    path = tmp_path / "monitor.yaml"
    path.write_text(
        yaml.safe_dump(fast_config_dict(discord_sim, tmp_path / "state", **reconcile_extra()))
    )

    async def cli(*args: str) -> tuple[int, str]:
        rc, out, _ = await run_monitor("reconcile", "-c", str(path), *args, merge_stderr=True)
        return rc, out

    rc, out = await cli("--dry-run")
    assert rc == 0, out
    assert "dry run" in out and all(cid in out for cid in leaked)
    assert len(discord_sim.state.channels) == 3
    rc, out = await cli()
    assert rc == 0, out
    assert {str(c) for c in discord_sim.state.channels}.isdisjoint(leaked)
    assert len(discord_sim.state.channels) == 1
