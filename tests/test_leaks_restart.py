"""A CDP restart mid-load, against the CDP emulator (a real restart: connections dropped,
delete timers lost, the start line written to `--log-dir`) and the whole daemon: every
channel of the requests that died is deleted once their time has passed, and nothing
else (CDP timers scaled down 100 times, the monitor's `cdp` section to match)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.wait import wait_for
from tests.test_cdp_emulator import CHAT, MakeEmu, make_emu

__all__ = ["make_emu"]
BOUND = 60.0


async def chat(http: aiohttp.ClientSession, daemon: Daemon) -> int:
    assert daemon.gate_url is not None
    try:
        async with http.post(daemon.gate_url + "/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0


def conversations(sim: DiscordSimulator) -> dict[int, Any]:
    return {c.id: c for c in sim.state.channels.values() if c.name.startswith("cdp-chat-")}


async def test_after_a_restart_mid_load_the_dead_requests_channels_go_and_nothing_else(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    logs = tmp_path / "cdp-logs"
    # 600 s CHANNEL_AUTO_DEL_TIME (6 s here): timers of finished requests still pending
    # when CDP restarts. REQUEST_OUT_TIME 300 s (3 s), attempts 60 s (0.6 s).
    emu = await make_emu(time_scale=100.0, auto_delete=600.0, log_dir=logs)
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        discord={"gateway_session": {"enabled": False}},
        gate={"enabled": True, "listen": "127.0.0.1:0", "upstream": emu.base_url},
        signals={"cdp_log": {"enabled": True, "glob": str(logs / "log-*.log")}},
        cdp={"auto_delete": "6s", "request_timeout": "3s", "create_attempt_timeout": "600ms"},
        reconcile={
            "enabled": True,
            "interval": "1h",
            "min_age": "1h",
            "ledger_grace": "1h",  # finished requests' lost timers: not this test's subject
            "settle_delay": "0s",
            "census_interval": "200ms",
            "list_spacing": "200ms",
        },
    )
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready", bound=BOUND)
        assert await asyncio.gather(chat(http, daemon), chat(http, daemon)) == [200, 200]
        finished = set(conversations(discord_sim))
        assert len(finished) == 2
        # Coze thinks for long: three requests are in flight, prompts posted, no answer yet.
        discord_sim.state.coze_faults.delay_ms = 60_000
        in_flight = [asyncio.create_task(chat(http, daemon)) for _ in range(3)]
        await wait_for(
            lambda: (
                sum(
                    1
                    for i, c in conversations(discord_sim).items()
                    if i not in finished and c.messages
                )
                == 3
            ),
            what="three requests in flight",
            bound=BOUND,
        )
        dying = set(conversations(discord_sim)) - finished
        async with http.post(emu.admin_url + "/restart") as resp:
            assert resp.status == 200
        assert await asyncio.gather(*in_flight) != [200] * 3  # dropped (the gate's 502)
        await wait_for(lambda: emu.running, what="CDP back", bound=BOUND)
        discord_sim.state.coze_faults.delay_ms = 300
        assert await chat(http, daemon) == 200  # a request of the new process
        after = set(conversations(discord_sim)) - finished - dying
        await wait_for(
            lambda: not dying & set(discord_sim.state.channels),
            what="the dead requests' channels deleted",
            bound=BOUND,
        )
        assert (finished | after) <= set(discord_sim.state.channels)  # nothing else
        audit = [r for r in daemon.state_dir.read_audit() if r["event"] == "deleted"]
        assert {int(r["channel_id"]) for r in audit} == dying
        assert {r["reason"] for r in audit} == {"cdp_restart"}
