"""A CDP restart while the daemon is away (stopped, SIGKILLed, restarting), against the
CDP emulator writing its log file and the whole daemon: the next daemon finds CDP's start
line in what the log got since its last look (`cdplog.json`), records the restart no
later than it happened, and the channel of the request that died with CDP, never
answered and so unknown to the ledger, is deleted once its time has passed."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from monitor.config import Config
from monitor.discord.snowflake import snowflake_time
from monitor.health.cdpresume import CURSOR_FILE, LogMark, scan_for_start
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.wait import wait_for
from tests.test_cdp_emulator import CHAT, MakeEmu, chat, make_emu

__all__ = ["make_emu"]
BOUND = 60.0


def config_for(sim: DiscordSimulator, tmp_path: Path, cdp_log: Path) -> Config:
    # CDP's timers 100x faster: attempts 0.6 s, REQUEST_OUT_TIME 3 s; the monitor's to match.
    return fast_config(
        sim,
        tmp_path / "state",
        discord={"gateway_session": {"enabled": False}},
        signals={"cdp_log": {"enabled": True, "file": str(cdp_log)}},
        cdp={"auto_delete": "6s", "request_timeout": "3s", "create_attempt_timeout": "600ms"},
        reconcile={
            "enabled": True,
            "interval": "200ms",
            "min_age": "1h",
            "settle_delay": "0s",
            "census_interval": "200ms",
            "list_spacing": "200ms",
        },
    )


def saved_mark(tmp_path: Path) -> LogMark | None:
    path = tmp_path / "state" / CURSOR_FILE
    if not path.exists():
        return None
    return LogMark.from_json(json.loads(path.read_text()), now=float("inf"))


async def test_a_restart_while_the_daemon_was_away_is_caught_up_from_cdps_log(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cdp_log = tmp_path / "cdp.log"
    emu = await make_emu(time_scale=100.0, auto_delete=600.0, log_path=cdp_log)
    config = config_for(discord_sim, tmp_path, cdp_log)
    discord_sim.state.coze_faults.silence = True  # the request waits for Coze: no answer
    # out-time: CDP waits an hour (36 s here) for Coze's answer: still waiting when it dies.
    request = asyncio.create_task(chat(http, emu, headers={"out-time": "3600"}))
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready", bound=BOUND)
        channel = await wait_for(
            lambda: next((c for c in discord_sim.state.channels.values() if c.messages), None),
            what="the request's channel with its prompt",
            bound=BOUND,
        )
        born = snowflake_time(channel.id)
        async with http.get(emu.base_url + "/v1/models") as resp:  # a [GIN] line, read live
            assert resp.status == 200
        mark = await wait_for(
            lambda: (
                (m := saved_mark(tmp_path)) is not None
                and m.at > born
                and m.utc_offset is not None
                and m
            ),
            what="the log position saved after the channel was made",
            bound=BOUND,
        )
        assert mark.utc_offset == 0  # this machine's local time is UTC (as CDP's here)
        assert daemon.ledger.restarts == ()
    # No monitor runs: CDP dies with the request and comes back, a second or more after
    # the daemon's last look.
    last = saved_mark(tmp_path)
    assert last is not None
    await wait_for(lambda: emu.clock.time() >= int(last.at) + 1, what="the next second")
    restart_sent = emu.clock.time()
    async with http.post(emu.admin_url + "/restart") as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ClientError):
        await request
    await wait_for(lambda: emu.running, what="CDP back", bound=BOUND)
    restarted_by = emu.clock.time()
    async with running_daemon(config) as daemon:
        # The restart is known from the start (the log loop's first step), no later
        # than it happened ...
        await wait_for(lambda: daemon.ledger.restarts, what="the restart", bound=BOUND)
        [at] = daemon.ledger.restarts
        assert born < at <= restarted_by
        # Dated by the start line (whole seconds, in CDP's local time: the UTC offset
        # learnt from the lines read live), not the last look before the daemon stopped.
        assert at >= int(restart_sent) > last.at
        # ... and the dead request's channel goes once its time (4.8 s) has passed.
        await wait_for(
            lambda: channel.id not in discord_sim.state.channels,
            what="the dead request's channel deleted",
            bound=BOUND,
        )
        deleted = [r for r in daemon.state_dir.read_audit() if r["event"] == "deleted"]
        assert [(int(r["channel_id"]), r["reason"]) for r in deleted] == [
            (channel.id, "cdp_restart")
        ]


async def test_without_a_start_line_since_the_last_look_no_restart_is_made_up(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cdp_log = tmp_path / "cdp.log"
    emu = await make_emu(time_scale=100.0, log_path=cdp_log)
    config = config_for(discord_sim, tmp_path, cdp_log)
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready", bound=BOUND)
        first = await wait_for(lambda: saved_mark(tmp_path), what="a mark", bound=BOUND)
    # CDP logs while no monitor runs (requests, their [GIN] lines), but does not restart.
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
    assert cdp_log.read_text().count("started") == 1
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready", bound=BOUND)
        await wait_for(lambda: saved_mark(tmp_path) != first, what="a new mark", bound=BOUND)
        assert daemon.ledger.restarts == ()


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"path": "/x", "dev": 1, "ino": 2, "offset": -1, "at": 10.0},
        {"path": "/x", "dev": True, "ino": 2, "offset": 0, "at": 10.0},
        {"path": "/x", "dev": 1, "ino": 2, "offset": 0, "at": float("nan")},
        {"path": "/x", "dev": 1, "ino": 2, "offset": 0, "at": 1e12},  # far in the future
        {"path": "/x", "dev": 1, "ino": 2, "offset": 0, "at": 10.0, "utc_offset": 100.0},
        {"path": "/x", "dev": 1, "ino": 2, "offset": 0, "at": 10.0, "utc_offset": 9e9},
    ],
)
def test_a_saved_position_that_cannot_be_trusted_is_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        LogMark.from_json(raw, now=1000.0)


def test_the_scan_reads_complete_lines_from_the_mark_or_a_whole_new_file(tmp_path: Path) -> None:
    log = tmp_path / "cdp.log"
    start = "[SYS] 2026/12/01 - 10:00:00 | COZE-DISCORD-PROXY v4.6.5 started \n"
    gin = "[GIN] 2026/12/01 - 10:00:01 | rid | 200 |   1s |  127.0.0.1 |    POST /v1/x\n"
    log.write_text(start + gin)
    st = log.stat()
    ident = (st.st_dev, st.st_ino)
    end, [started] = scan_for_start(log, (ident, 0))
    assert end == (ident, len(start + gin))
    assert started.logged_at == datetime(2026, 12, 1, 10, 0, 0)
    after_start = len(start.encode())
    assert scan_for_start(log, (ident, after_start)) == ((ident, len(start + gin)), [])
    # A line still being written is left to the follower.
    with log.open("a") as fh:
        fh.write(start[:20])
    assert scan_for_start(log, (ident, after_start)) == ((ident, len(start + gin)), [])
    # Another file at the path (rotated) is all new.
    assert len(scan_for_start(log, ((0, 0), 10**6))[1]) == 1
