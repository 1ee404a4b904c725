"""CDP's channels (discord/channel.go), the part that leaks.

`create_with_retry` is CreateChannelWithRetry as of v4.4.4-v4.6.5 (channel.go:112-169):
3 attempts, each a goroutine given 60 s and never cancelled, all with the same name;
`Create channel timed out, retrying...N ` for every timed-out attempt, the 3rd too;
any other error returned at once, no retry, nothing logged here; 30013 with
`MAX_CHANNEL_DEL_TYPE=ALL|OLDEST` purges `cdp-chat-` channels, then one direct create.
`schedule_delete` is SetChannelDeleteTimer: a blocking GET of the channel first, then an
in-memory timer; a failed delete is logged and never retried."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from monitor.sim.cdp.discordgo import DiscordgoClient, GoError
from monitor.sim.cdp.settings import FULL_GUILD_TEXT
from monitor.vocab import CHANNEL_PREFIX

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

TIMEOUT_ERROR = "failed after 3 attempts due to timeout, please reset BOT_TOKEN"
NOTHING_TO_DELETE = "当前Discord服务器频道已满，且无CDP临时频道可删除"


class NilContextPanic(Exception):
    """A Go panic in a bare goroutine: the whole CDP process dies."""


class Channels:
    """One CDP process's channel work; `kill` is what its death does to it."""

    def __init__(self, emu: CdpEmulator, client: DiscordgoClient) -> None:
        self.emu = emu
        self.client = client
        self.delete_timers: dict[str, asyncio.Task[None]] = {}
        self.goroutines: set[asyncio.Task[Any]] = set()

    def go(self, coro: Any) -> asyncio.Task[Any]:
        """A goroutine of this process: it dies with the process."""
        task = asyncio.get_running_loop().create_task(coro)
        self.goroutines.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self.goroutines.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed background call is no crash

    async def kill(self) -> tuple[int, int]:
        """Cancel every goroutine and timer; returns (goroutines, timers) lost."""
        timers = list(self.delete_timers.values())
        tasks = [t for t in self.goroutines if t not in timers]
        for task in [*timers, *tasks]:
            task.cancel()
        await asyncio.gather(*timers, *tasks, return_exceptions=True)
        self.delete_timers.clear()
        return len(tasks), len(timers)

    # -- creation --------------------------------------------------------------------

    async def create(self, name: str, parent_id: str = "", type_: int = 0) -> str:
        """ChannelCreate / ChannelCreateComplex: one POST /guilds/{id}/channels."""
        body: dict[str, Any] = {"name": name, "type": type_}
        if parent_id:
            body["parent_id"] = parent_id
        self.emu.stats.create_attempts += 1
        try:
            data = await self.client.request(
                "POST", f"/guilds/{self.emu.settings.guild_id}/channels", body, create=True
            )
        except GoError:
            self.emu.stats.create_errors += 1
            raise
        self.emu.stats.channels_created += 1
        return str(data["id"])

    async def create_with_retry(
        self, rid: str | None, name: str, *, nil_context: bool = False
    ) -> str:
        """CreateChannelWithRetry; `nil_context` is the stay-active task's nil *gin.Context,
        on which the timeout's LogWarn panics (gin context.go:1217-1228)."""
        settings = self.emu.settings
        for attempt in range(1, settings.attempts + 1):
            task = self.go(self.create(name))
            if not await self._within(task, settings.scaled(settings.attempt_timeout)):
                # Never cancelled: the channel will exist, nobody left to delete it.
                task.add_done_callback(self._late)
                self.emu.stats.create_timeouts += 1
                if nil_context:
                    raise NilContextPanic("(*gin.Context).Value on a nil context")
                self.emu.log("WARN", rid, f"Create channel timed out, retrying...{attempt}")
                continue
            exc = task.exception()
            if exc is None:
                return str(task.result())
            if FULL_GUILD_TEXT in str(exc) and settings.max_channel_del_type in ("ALL", "OLDEST"):
                return await self._purge_then_create(rid, name)
            raise exc
        raise GoError(TIMEOUT_ERROR)

    async def _purge_then_create(self, rid: str | None, name: str) -> str:
        oldest = self.emu.settings.max_channel_del_type == "OLDEST"
        if not await self.delete_all_cdp(rid, only_first=oldest):
            raise GoError(NOTHING_TO_DELETE)
        return await self.create(name)  # no timeout wrapper (channel.go:146)

    async def _within(self, task: asyncio.Task[Any], timeout: float) -> bool:
        timer = asyncio.ensure_future(self.emu.clock.sleep(timeout))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return task.done()

    def _late(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.emu.stats.late_channels += 1
        self.emu.stats.late_channel_ids.append(str(task.result()))

    # -- deletion --------------------------------------------------------------------

    async def delete_all_cdp(self, rid: str | None, *, only_first: bool = False) -> bool:
        """ChannelDelAllForCdp / ChannelDelOldestForCdp: listing order, one at a time,
        stopping at the first error (raised); True if anything was deleted."""
        try:
            channels = await self.client.request(
                "GET", f"/guilds/{self.emu.settings.guild_id}/channels"
            )
        except GoError as exc:
            self.emu.log("ERR", rid, f"服务器Id查询频道失败 {exc}")
            raise
        deleted = False
        for channel in channels:
            cid = str(channel.get("id"))
            if cid == self.emu.channel_id or not str(channel.get("name", "")).startswith(
                CHANNEL_PREFIX
            ):
                continue
            try:
                await self.client.request("DELETE", f"/channels/{cid}")
            except GoError as exc:
                self.emu.log(
                    "ERR",
                    rid,
                    f"频道数量已满-删除频道异常(可能原因:对话请求频道已被自动删除) {exc}",
                )
                raise
            self.emu.stats.channels_deleted += 1
            self.emu.log("WARN", rid, f"频道数量已满-自动删除频道Id {cid}")
            deleted = True
            if only_first:
                break
        return deleted

    async def delete(self, channel_id: str) -> bool:
        """ChannelDel: `删除频道时异常 <err>` with no request id and no channel id."""
        try:
            await self.client.request("DELETE", f"/channels/{channel_id}")
        except GoError as exc:
            self.emu.stats.delete_failures += 1
            self.emu.log("ERR", None, f"删除频道时异常 {exc}")
            return False
        self.emu.stats.channels_deleted += 1
        return True

    async def set_delete_timer(self, channel_id: str, seconds: float) -> None:
        """SetChannelDeleteTimer: GET the channel (blocking), then a replaceable timer."""
        try:
            channel = await self.client.request("GET", f"/channels/{channel_id}")
        except GoError:
            channel = None  # an error does not stop the timer (channel.go:23-27)
        if channel is not None and not str(channel.get("name", "")).startswith(CHANNEL_PREFIX):
            return
        if channel_id == self.emu.channel_id:
            return
        self.cancel_delete_timer(channel_id)
        self.delete_timers[channel_id] = self.go(self._delete_later(channel_id, seconds))

    def cancel_delete_timer(self, channel_id: str) -> None:
        old = self.delete_timers.pop(channel_id, None)
        if old is not None:
            old.cancel()

    async def _delete_later(self, channel_id: str, seconds: float) -> None:
        try:
            await self.emu.clock.sleep(self.emu.settings.scaled(seconds))
            await self.delete(channel_id)
        finally:
            if self.delete_timers.get(channel_id) is asyncio.current_task():
                del self.delete_timers[channel_id]
