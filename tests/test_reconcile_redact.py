"""The bot token never shows in what we answer or print when Discord or a proxy echoes it
back in an error: the /reconcile report, /status and the CLI's report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.config import parse_config
from monitor.errors import DiscordHTTPError
from monitor.health.probes import ProbeResult
from monitor.logs import set_secrets
from monitor.reconcile import format_report
from monitor.sim.discord import DiscordSimulator
from monitor.wiring import reconcile_once
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.reconcile import HOUR
from tests.test_reconcile_run import sim_env

TOKEN = "sim-token"  # the simulator's bot token


@pytest.fixture(autouse=True)
def _secrets() -> Iterator[None]:
    set_secrets([TOKEN])
    yield
    set_secrets([])


class _EchoingProxy:
    """A proxy in front of Discord that answers a DELETE with the request's token."""

    def __init__(self, rest: Any) -> None:
        self._rest = rest

    async def list_guild_channels(self, guild_id: int | str) -> Any:
        return await self._rest.list_guild_channels(guild_id)

    async def get_channel(self, channel_id: int | str) -> Any:
        return await self._rest.get_channel(channel_id)

    async def delete_channel(self, channel_id: int | str) -> Any:
        raise DiscordHTTPError(
            403, message=f"denied for Authorization: Bot {TOKEN}", route="/channels/{id}"
        )


async def test_report_status_and_cli_text_redact_an_echoed_token(tmp_path: Path) -> None:
    async with sim_env(tmp_path, rest_wrapper=_EchoingProxy) as env:
        await env.seed(2, age=HOUR)
        report = await env.rec.run(trigger="api")
        assert report.errors and TOKEN in report.errors[0]["error"]  # the echo happened
        answer = json.dumps(report.as_dict())
        assert TOKEN not in answer and "Bot ***" in answer
        assert TOKEN not in format_report(report) and "Bot ***" in format_report(report)
        assert TOKEN not in json.dumps(env.rec.status())


async def test_status_redacts_an_echoed_token(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with running_daemon(fast_config(discord_sim, tmp_path / "state")) as daemon:
        daemon.probe_results["rest"] = ProbeResult("rest", False, 0.1, f"401: Bot {TOKEN}")
        headers = {"Authorization": "Bearer control-secret"}
        async with http.get(f"{daemon.control_url}/status", headers=headers) as resp:
            text = await resp.text()
        assert resp.status == 200 and TOKEN not in text and "Bot ***" in text
        json.dumps(daemon.status(), allow_nan=False)  # strict JSON


async def test_cli_reconcile_redacts_with_the_configs_token(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    set_secrets([])  # a fresh CLI process: nothing configured yet
    config = parse_config(
        f"discord:\n  token: {TOKEN}\n  guild_id: {discord_sim.settings.guild_id}\n"
        f"  api_base: {discord_sim.api_base}\nstate_dir: {tmp_path / 'state'}\n"
    )
    report = await reconcile_once(config, dry_run=True, session=http)
    report.errors.append({"id": None, "name": None, "error": f"proxy said: Bot {TOKEN}"})
    assert TOKEN not in format_report(report)
