"""A real Prometheus scrapes a real daemon watching the simulator, with our alert rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

from monitor.sim.discord import DiscordSimulator
from tests.conftest import REPO_ROOT
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.prom import free_port, running_prometheus, static_job
from tests.helpers.wait import wait_for

ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"


def alerts_without_waiting(target: Path) -> Path:
    """alerts.yml as shipped, except every `for:` is 0s so a test need not wait 10 minutes.
    The expressions, labels and annotations are the shipped ones."""
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    target.write_text(yaml.safe_dump(rules))
    return target


async def test_prometheus_sees_census_and_fires_headroom_alert(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        control={"listen": f"127.0.0.1:{port}", "token": "control-secret"},
        reconcile={
            "enabled": True,
            "interval": "1h",
            "min_age": "1h",  # nothing is old enough: the guild stays full
            "emergency_min_age": "1h",
            "census_interval": "200ms",
            "list_spacing": "200ms",
        },
    )
    guild = str(discord_sim.settings.guild_id)
    async with (
        running_daemon(config) as daemon,
        running_prometheus(
            tmp_path / "prometheus",
            scrape_configs=[static_job("cdp-monitor", f"127.0.0.1:{port}")],
            rule_files=[alerts_without_waiting(tmp_path / "alerts.yml")],
        ) as prom,
    ):
        await wait_for(daemon.ready, what="daemon ready")
        # 450 of 500 channels: past the 80% headroom threshold.
        async with http.post(
            f"{discord_sim.admin_url}/guilds/{guild}/channels",
            json={"count": 450, "prefix": "cdp-chat-", "age_seconds": 60},
        ) as resp:
            assert resp.status == 200
        series = await prom.wait_for_series(f'cdpmon_guild_channels{{guild="{guild}"}} == 450')
        assert series[0]["metric"]["job"] == "cdp-monitor"

        async def headroom_firing() -> list[dict[str, Any]]:
            return [
                a
                for a in await prom.alerts()
                if a["labels"]["alertname"] == "GuildChannelHeadroomLow" and a["state"] == "firing"
            ]

        async def all_alerts() -> str:
            return f": {await prom.alerts()}"

        # Rules are evaluated every second.
        firing = await wait_for(
            headroom_firing, what="GuildChannelHeadroomLow firing", interval=0.1, detail=all_alerts
        )
        assert firing[0]["labels"]["guild"] == guild
        assert firing[0]["labels"]["severity"] == "warning"
        # Nothing should be wrong otherwise: the monitor itself is up and healthy.
        names = {a["labels"]["alertname"] for a in await prom.alerts() if a["state"] == "firing"}
        assert "CdpMonitorDown" not in names and "DiscordTokenInvalid" not in names
