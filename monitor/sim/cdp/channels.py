"""CDP's channels, the part that leaks: CreateChannelWithRetry (a timed-out attempt is
abandoned, never cancelled, so its channel appears later with no delete timer), the
default channel, and the in-memory delete timers a restart forgets."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from monitor.errors import DiscordError, DiscordHTTPError
from monitor.sim.cdp.golog import go_error_text
from monitor.sim.cdp.settings import LIMIT_CODE, openai_error
from monitor.vocab import CHANNEL_PREFIX

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator


class Channels:
    """Creating the channel a request talks in, and deleting it later (or not)."""

    def __init__(self, emu: CdpEmulator) -> None:
        self.emu = emu
        self.delete_timers: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._default_channel: str | None = emu.settings.default_channel_id
        self._default_lock = asyncio.Lock()

    async def stop(self) -> None:
        tasks = [*self.delete_timers.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.delete_timers.clear()
        self._background.clear()

    def forget_timers(self) -> int:
        """What a CDP restart does to delete timers: forgets them. Returns how many."""
        timers = list(self.delete_timers.values())
        self.delete_timers.clear()
        for task in timers:
            task.cancel()
        return len(timers)

    async def send_channel(self, rid: str, channel_field: str | None) -> tuple[str, bool]:
        """The channel to talk in and whether this request created it (so owns a timer)."""
        if channel_field:
            return channel_field, False
        if self.emu.settings.default_channel_enable:
            return await self._default_channel_id(rid), False
        name = f"{CHANNEL_PREFIX}{rid}"
        return await self.create_channel_with_retry(rid, name), True

    async def _default_channel_id(self, rid: str) -> str:
        async with self._default_lock:
            if self._default_channel is None:
                try:
                    self._default_channel = await self.create_channel("cdp-default")
                except DiscordError as exc:
                    raise openai_error(500, go_error_text(exc), "request_error") from exc
            return self._default_channel

    async def create_channel_with_retry(self, rid: str, name: str) -> str:
        """CreateChannelWithRetry: timed-out attempts keep running in the background."""
        attempts = self.emu.settings.attempts
        timeouts = 0
        for attempt in range(1, attempts + 1):
            task = asyncio.create_task(self.create_channel(name))
            self._track(task)
            if not await self._finished_within(task, self.emu.settings.attempt_timeout):
                # Never cancelled: the request is already at Discord and its channel
                # will exist, with nobody left to delete it.
                task.add_done_callback(self._abandoned_done)
                self.emu.stats.create_timeouts += 1
                timeouts += 1
                if attempt < attempts:
                    self.emu.log("WARN", rid, f"Create channel timed out, retrying...{attempt}")
                continue
            exc = task.exception()
            if exc is None:
                return task.result()
            if isinstance(exc, DiscordHTTPError) and exc.code == LIMIT_CODE:
                message = (
                    f"Maximum number of server channels reached ({LIMIT_CODE}), "
                    f"please delete unused channels: {go_error_text(exc)}"
                )
                self.emu.log("ERR", rid, message)
                raise openai_error(500, message, "request_error")
            self.emu.log("WARN", rid, f"Failed to create channel, error: {go_error_text(exc)}")
        if timeouts == attempts:
            message = f"failed after {attempts} attempts due to timeout, please reset BOT_TOKEN"
        else:
            message = f"failed to create channel after {attempts} attempts, please reset BOT_TOKEN"
        self.emu.log("ERR", rid, message)
        raise openai_error(500, message, "request_error")

    async def _finished_within(self, task: asyncio.Task[str], timeout: float) -> bool:
        timer = asyncio.ensure_future(self.emu.clock.sleep(timeout))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return task.done()

    def _abandoned_done(self, task: asyncio.Task[str]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.emu.stats.late_channels += 1
        self.emu.stats.late_channel_ids.append(task.result())

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed background attempt is no crash

    async def create_channel(self, name: str, parent_id: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "type": 0}
        if parent_id:
            body["parent_id"] = parent_id
        self.emu.stats.create_attempts += 1
        data = await self.emu.client.request(
            "POST", f"/guilds/{self.emu.settings.guild_id}/channels", body, create=True
        )
        self.emu.stats.channels_created += 1
        return str(data["id"])

    def schedule_delete(self, channel_id: str) -> None:
        """SetChannelDeleteTimer: an in-memory timer, replaced if one exists."""
        if self.emu.settings.auto_delete <= 0:
            return
        old = self.delete_timers.pop(channel_id, None)
        if old is not None:
            old.cancel()
        self.delete_timers[channel_id] = asyncio.create_task(self._delete_later(channel_id))

    async def _delete_later(self, channel_id: str) -> None:
        try:
            await self.emu.clock.sleep(self.emu.settings.auto_delete)
            await self.emu.client.request("DELETE", f"/channels/{channel_id}")
            self.emu.stats.channels_deleted += 1
        except DiscordError as exc:  # never retried, as in CDP
            self.emu.stats.delete_failures += 1
            self.emu.log("ERR", None, f"delete channel {channel_id} error: {go_error_text(exc)}")
        finally:
            if self.delete_timers.get(channel_id) is asyncio.current_task():
                del self.delete_timers[channel_id]
