"""The CDP emulator as a process (CDP-FACTS.md sections 1 and 5): where its log lines
go, `--log-dir` naming, start-up FatalLog, a crash and `restart: always` (connections
dropped, abandoned creates killed, delete timers lost), and the daily stay-active task
whose nil-context panic is one way to get that crash."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from monitor.clock import FakeClock
from monitor.sim.cdp import CdpEmulator, CdpFatal, CdpSettings
from monitor.sim.cdp.golog import CdpLog
from monitor.sim.cdp.stayactive import next_run, sonyflake
from monitor.sim.discord import DiscordSimulator
from tests.test_cdp_emulator import (
    CHAT,
    CREATE_ROUTE,
    MakeEmu,
    cdp_state,
    chat,
    eventually,
    lines,
    make_emu,
    put_faults,
    sim_channels,
)

__all__ = ["make_emu"]
START = (
    "[SYS] {t} | COZE-DISCORD-PROXY v4.6.5 started ",
    "[SYS] {t} | Environment variable check passed. ",
    "[SYS] {t} | Bot is now running. Enjoy It. ",
)


def test_lines_are_byte_for_byte_and_go_where_cdp_writes_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    clock = FakeClock(start=datetime(2024, 5, 1, 12, 0, 0).timestamp())
    log = CdpLog(clock, capacity=100, log_dir=tmp_path / "logs", echo=True)
    log.open()
    log.sys("COZE-DISCORD-PROXY v4.6.5 started")
    log.line("INFO", "rid1", "ok")
    log.line("WARN", "rid1", "Create channel timed out, retrying...3")
    log.line("ERR", None, "删除频道时异常 x")
    log.fatal("环境变量 CHANNEL_ID 未设置")
    log.gin("rid1", 200, 1.5, "10.0.0.1", "POST", "/v1/chat/completions")
    log.close()
    t = "2024/05/01 - 12:00:00"
    assert out.getvalue() == (
        f"[SYS] {t} | COZE-DISCORD-PROXY v4.6.5 started \n"
        f"[INFO] {t} | rid1 | ok \n"
        f"[GIN] {t} | rid1 | 200 |          1.5s |        10.0.0.1 |    POST /v1/chat/completions\n"
    )
    assert err.getvalue() == (
        f"[WARN] {t} | rid1 | Create channel timed out, retrying...3 \n"
        f"[ERR] {t} | UNKNOWN | 删除频道时异常 x \n"
        f"[FATAL] {t} | [环境变量 CHANNEL_ID 未设置] \n"
    )
    # --log-dir: one file named by the start date, both streams in it.
    [file] = (tmp_path / "logs").iterdir()
    assert file.name == "log-20240501.log"
    assert file.read_text().count("\n") == 6


async def test_default_channel_without_channel_id_fails_to_start(
    discord_sim: DiscordSimulator,
) -> None:
    settings = CdpSettings(
        discord_api_base=discord_sim.api_base, guild_id=discord_sim.settings.guild_id
    ).with_env({"DEFAULT_CHANNEL_ENABLE": "1"})
    emu = CdpEmulator(settings)
    with pytest.raises(CdpFatal):
        await emu.start()
    assert [re.sub(r"\d{4}/\S+ - \S+", "T", x) for x in emu.log_lines] == [
        "[SYS] T | COZE-DISCORD-PROXY v4.6.5 started ",
        "[FATAL] T | [环境变量 CHANNEL_ID 未设置] ",
    ]
    assert not emu.running


async def test_a_restart_drops_requests_kills_creates_and_forgets_timers(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(auto_delete=600.0)  # 30 s at scale 20: still pending
    status, rid, _ = await chat(http, emu)
    assert status == 200 and rid is not None
    await put_faults(http, discord_sim, latency_ms=800, routes=[CREATE_ROUTE])
    in_flight = asyncio.create_task(chat(http, emu))
    await eventually(lambda: emu.stats.creates_in_flight == 1)
    async with http.post(emu.admin_url + "/restart") as resp:
        assert (await resp.json())["forgotten_delete_timers"] == 1
    with pytest.raises(aiohttp.ClientError):
        await in_flight  # the connection dropped: no answer, no X-Request-Id
    await eventually(lambda: emu.running)
    state = await cdp_state(http, emu)
    assert state["restarts"] == 1 and state["dropped_requests"] == 1
    assert state["lost_delete_timers"] == 1 and state["pending_delete_timers"] == 0
    assert state["killed_creates"] >= 1
    # The start lines again, after the first run's.
    starts = [x for x in emu.log_lines if "COZE-DISCORD-PROXY v4.6.5 started" in x]
    assert len(starts) == 2
    # The finished request's channel is never deleted now.
    assert sim_channels(discord_sim, f"cdp-chat-{rid.lower()}")
    await put_faults(http, discord_sim, latency_ms=0)
    assert (await chat(http, emu))[0] == 200  # the new process answers


async def test_a_restart_while_coze_is_silent_drops_the_request_like_a_dead_process(
    make_emu: MakeEmu,
    discord_sim: DiscordSimulator,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The request waits for Coze with its channel made and its prompt posted; CDP dies.
    # A dead process runs no more of the handler (no deferred delete timer, nothing
    # logged): the client's connection drops, with no traceback on the emulator's side.
    emu = await make_emu(auto_delete=20.0)
    discord_sim.state.coze_faults.silence = True
    in_flight = asyncio.create_task(chat(http, emu, body={**CHAT, "stream": True}))
    [channel] = await eventually(
        lambda: [c for c in sim_channels(discord_sim) if c.name.startswith("cdp-chat-")]
    )
    await eventually(lambda: channel.messages)
    with caplog.at_level(logging.DEBUG):
        async with http.post(emu.admin_url + "/restart") as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientError):
            await in_flight  # no answer, no X-Request-Id
        await eventually(lambda: emu.running)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
    state = await cdp_state(http, emu)
    assert state["dropped_requests"] == 1 and state["pending_delete_timers"] == 0
    assert channel.id in discord_sim.state.channels  # CDP's timer for it never existed
    assert not [x for x in emu.log_lines if x.startswith("[GIN]")]  # no answer logged


async def test_stay_active_task_creates_posts_and_deletes(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(time_scale=100.0)
    async with http.post(emu.admin_url + "/stay-active") as resp:
        assert resp.status == 200
    await eventually(lambda: any("CDP Scheduled Task Job End!" in x for x in emu.log_lines))
    sys_lines = [re.sub(r"\d{4}/\S+ - \S+", "T", x) for x in lines(emu, "[SYS]")][3:]
    assert sys_lines[0] == "[SYS] T | CDP Scheduled Task Job Start! "
    assert re.fullmatch(
        r"\[SYS\] T \| ChannelId\{\d+\} BotId\{1100000000000000400\} 活跃机器人任务消息发送成功! ",
        sys_lines[1],
    )
    state = await cdp_state(http, emu)
    assert state["channels_created"] == 1 and state["channels_deleted"] == 1
    assert discord_sim.state.requests[(CREATE_ROUTE, 201)] == 1


async def test_stay_active_task_crashes_cdp_when_creation_fails(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(auto_delete=600.0)
    await chat(http, emu)  # leaves a pending delete timer
    await put_faults(http, discord_sim, error_rate=1.0, error_status=403, routes=[CREATE_ROUTE])
    await http.post(emu.admin_url + "/stay-active")
    await eventually(lambda: emu.stats.restarts == 1 and emu.running)
    assert emu.stats.lost_delete_timers == 1
    assert "panic: runtime error: invalid memory address or nil pointer dereference" in (
        emu.log_lines
    )
    assert sum("v4.6.5 started" in x for x in emu.log_lines) == 2


def test_stay_active_runs_at_09_10_local_plus_jitter_and_names_by_sonyflake() -> None:
    at = datetime(2024, 5, 1, 8, 0, 0).timestamp()
    assert datetime.fromtimestamp(next_run(at, 17)) == datetime(2024, 5, 1, 9, 10, 17)
    late = datetime(2024, 5, 1, 9, 30, 0).timestamp()
    assert datetime.fromtimestamp(next_run(late, 0)) == datetime(2024, 5, 2, 9, 10, 0)
    first, second = sonyflake(at), sonyflake(at)
    assert first.isdigit() and first != second


async def test_chat_body_is_not_sent_before_the_delete_timer_get(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await put_faults(http, discord_sim, latency_ms=300, routes=["GET /channels/{channel_id}"])
    status, _, _ = await chat(http, emu, CHAT)
    assert status == 200
    # By the time the client has its answer, CDP's GET has been answered too.
    assert discord_sim.state.requests[("GET /channels/{channel_id}", 200)] == 1


def _sim_command(env: dict[str, str], *args: str) -> list[str]:
    return [sys.executable, "-m", "monitor", "sim", "--cdp", *args]


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DEFAULT_CHANNEL_ENABLE",)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra)
    return env


def test_sim_prints_its_urls_then_cdps_lines_on_stdout_and_stderr(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess

    env = _env(CHANNEL_AUTO_DEL_TIME="0")
    cmd = _sim_command(env, "--cdp-time-scale", "10", "--cdp-log-dir", str(tmp_path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["cdp_admin_url"] == info["cdp_url"] + "/_cdp"
        starts = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert [re.sub(r"\d{4}/\S+ - \S+", "T", x) for x in starts] == [
        line.format(t="T") + "\n" for line in START
    ]
    [log] = tmp_path.iterdir()
    assert re.fullmatch(r"log-\d{8}\.log", log.name)
    assert log.read_text().count("[SYS]") == 3


def test_sim_exits_1_when_cdp_would_not_start() -> None:
    import subprocess

    env = _env(DEFAULT_CHANNEL_ENABLE="1")
    done = subprocess.run(_sim_command(env), env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout.endswith("COZE-DISCORD-PROXY v4.6.5 started \n")
    assert re.fullmatch(r"\[FATAL\] \S+ - \S+ \| \[环境变量 CHANNEL_ID 未设置\] \n", done.stderr)
