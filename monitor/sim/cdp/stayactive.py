"""CDP's daily stay-active task (discord/discord.go:626-691), on unless
COZE_BOT_STAY_ACTIVE_ENABLE is set to something other than "1": at 09:10 local time
plus 0-59 s it creates `cdp-chat-<sonyflake>` for the bot, posts a message there, waits
5 s and deletes the channel. It calls CreateChannelWithRetry with a nil gin context:
a timed-out attempt (`LogWarn(c, ...)`) or a failed creation (`LogError(nil, ...)`)
dereferences nil in a bare goroutine, and the whole process dies."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from monitor.sim.cdp.channels import NilContextPanic
from monitor.sim.cdp.conversation import SendError
from monitor.sim.cdp.discordgo import GoError

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

SONYFLAKE_EPOCH = datetime(2023, 1, 1).timestamp()  # common/snowflakeid.go StartTime
PANIC = (
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]",
)
_sequence = 0


def sonyflake(now: float, machine: int = 1) -> str:
    """A sonyflake id: 10 ms ticks since 2023-01-01 << 24 | sequence << 16 | machine."""
    global _sequence
    _sequence = (_sequence + 1) % 256
    ticks = int((now - SONYFLAKE_EPOCH) * 100)
    return str(ticks << 24 | _sequence << 16 | machine)


def next_run(now: float, jitter: int) -> float:
    """The next 09:10 local time after `now`, plus `jitter` seconds."""
    local = datetime.fromtimestamp(now)
    at = local.replace(hour=9, minute=10, second=0, microsecond=0)
    if local > at:
        at += timedelta(days=1)
    return at.timestamp() + jitter


async def daily_task(emu: CdpEmulator) -> None:
    rng = random.Random(emu.settings.seed)
    while True:
        now = emu.clock.time()
        await emu.clock.sleep(next_run(now, rng.randrange(60)) - now)
        await run_task(emu)


async def run_task(emu: CdpEmulator) -> None:
    """One run of the task; a crash of the process when channel creation is unhealthy."""
    emu.sys_log("CDP Scheduled Task Job Start!")
    bot = emu.coze_bot_id
    created: list[str] = []
    channel_id = emu.channel_id
    if not channel_id:
        name = f"cdp-chat-{sonyflake(emu.clock.time())}"
        try:
            channel_id = await emu.process.channels.create_with_retry(None, name, nil_context=True)
        except (NilContextPanic, GoError):
            emu.crash(PANIC)
            return
        created.append(channel_id)
    text = f"【{sonyflake(emu.clock.time())}】 CDP Scheduled Task Job Send Msg Success!"
    try:
        await emu.process.conversation.send(None, channel_id, text)
    except SendError:
        emu.sys_log(
            f"ChannelId{{{channel_id}}} BotId{{{bot}}} 活跃机器人任务消息发送异常!", error=True
        )
    else:
        emu.sys_log(f"ChannelId{{{channel_id}}} BotId{{{bot}}} 活跃机器人任务消息发送成功!")
    await emu.clock.sleep(emu.settings.scaled(5.0))
    for cid in created:
        await emu.process.channels.delete(cid)
    emu.sys_log("CDP Scheduled Task Job End!")
