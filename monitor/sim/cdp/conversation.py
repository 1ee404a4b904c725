"""A conversation in a channel: the prompt posted as CDP's SendMessage does
(discord/discord.go:497-573, sendmessage.go), and Coze's reply.

The prompt: `<text> \\n <@COZE_BOT_ID>`, split into <=1990-rune parts from the end
(common.ReverseSegment), each POSTed over raw HTTP with a random user token
(USER_AUTHORIZATION), no timeout and no 429 handling, a 1 s (scaled) sleep after each;
a 401 or "verify your account" drops the token and starts again with another.

The reply: until the Discord simulator has a Coze persona and the emulator its own
gateway session, the emulator plays Coze itself: after `reply_delay` it posts the reply
with the bot token (so the channel holds it) and hands the handler the edits Coze would
stream (cumulative text, the last one carrying Auto-Suggestion components)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from monitor.sim.cdp.discordgo import SHOWN_API, GoError, json_syntax_error
from monitor.sim.cdp.settings import (
    BROWSER_USER_AGENT,
    COZE_ERROR_TEXT,
    COZE_USER_DAILY_LIMIT_TEXT,
    IMAGE_URL,
    SEGMENT_RUNES,
)

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

SUGGESTIONS = ["Tell me more", "Give an example", "Summarise that"]


class SendError(Exception):
    """SendMessage failed; `str(exc)` is the message CDP answers with."""


class Unauthorized(Exception):
    """myerr.DiscordUnauthorizedError: the user token is dead."""


@dataclass(frozen=True)
class Reply:
    """One MESSAGE_CREATE/UPDATE of Coze's answer, as CDP's handlers see it."""

    message_id: str
    content: str
    suggestions: list[str] | None = None  # set on the message with components


END = Reply("", "", [])  # the stop signal (ReplyStopChans)


def reverse_segment(text: str, size: int = SEGMENT_RUNES) -> list[str]:
    """common.ReverseSegment: parts of `size` runes counted from the end."""
    parts: list[str] = []
    i = len(text)
    while i > 0:
        parts.insert(0, text[max(0, i - size) : i])
        i -= size
    return parts


class Conversation:
    """Sends prompts for one CDP process (its live USER_AUTHORIZATION list)."""

    def __init__(self, emu: CdpEmulator, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session
        self.user_auths: list[str] = list(emu.settings.user_auths)
        self._random = random.Random(emu.settings.seed)

    async def send(self, rid: str | None, channel_id: str, message: str) -> tuple[str, str]:
        """SendMessage: the last part's message id and the user token used."""
        content = f"{message} \n <@{self.emu.settings.coze_bot_id}>"
        while True:
            if not self.user_auths:
                self.emu.log("ERR", rid, "无可用的 user_auth")
                raise SendError("no_available_user_auth")
            auth = self._random.choice(self.user_auths)
            try:
                return await self._send_parts(rid, channel_id, content, auth), auth
            except Unauthorized:
                self.user_auths = [a for a in self.user_auths if a != auth]

    async def _send_parts(self, rid: str | None, channel_id: str, content: str, auth: str) -> str:
        message_id = ""
        for part in reverse_segment(content):
            try:
                message_id = await self._post(rid, channel_id, part.replace("\\n", "\n"), auth)
            except GoError as exc:
                self.emu.log("ERR", rid, f"error sending message: {exc}")
                raise SendError("error sending message") from None
            await self.emu.clock.sleep(self.emu.settings.scaled(1.0))
        return message_id

    async def _post(self, rid: str | None, channel_id: str, content: str, auth: str) -> str:
        """SendMsgByAuthorization: raw net/http, no timeout, no rate-limit handling."""
        settings = self.emu.settings
        shown = f"{SHOWN_API}/channels/{channel_id}/messages"
        headers = {
            "Content-Type": "application/json",
            "Authorization": auth,
            "Origin": "https://discord.com",
            "Referer": f"https://discord.com/channels/{settings.guild_id}/{channel_id}",
            "User-Agent": BROWSER_USER_AGENT,
        }
        url = f"{settings.discord_api_base.rstrip('/')}/channels/{channel_id}/messages"
        body = json.dumps({"content": content}, ensure_ascii=False).encode()
        try:
            async with self.session.post(url, data=body, headers=headers) as resp:
                raw = await resp.read()
        except aiohttp.ClientError as exc:
            self.emu.log("ERR", rid, f'Error sending request:Post "{shown}": {exc}')
            raise GoError(f'Post "{shown}": {exc}') from None
        self.emu.stats.prompts_sent += 1
        try:
            result = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise GoError(json_syntax_error(raw)) from None
        if isinstance(result, dict) and isinstance(result.get("id"), str):
            return str(result["id"])
        message = result.get("message") if isinstance(result, dict) else None
        if isinstance(message, str) and (
            "401: Unauthorized" in message
            or "You need to verify your account in order to perform this action." in message
        ):
            self.emu.log("WARN", rid, f"USER_AUTHORIZATION:{auth} EXPIRED")
            raise Unauthorized(auth)
        self.emu.log("ERR", rid, f"user_auth:{auth} result:{raw.decode('utf-8', 'replace')}")
        raise GoError(f"/api/v9/channels/{channel_id}/messages response myerr")

    async def replies(
        self, channel_id: str, prompt_id: str, prompt: str, *, image: bool
    ) -> AsyncIterator[Reply]:
        """Coze's answer as CDP's gateway handlers pass it on; ends at the stop signal."""
        gateway = self.emu.process.gateway
        if gateway is None:
            async for reply in self._persona(channel_id, prompt, image=image):
                yield reply
            return
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        gateway.waiters[prompt_id] = queue  # registered after the send, as in CDP
        try:
            while (reply := await queue.get()) is not END:
                yield reply
        finally:
            gateway.waiters.pop(prompt_id, None)

    async def _persona(self, channel_id: str, prompt: str, *, image: bool) -> AsyncIterator[Reply]:
        """The emulator playing Coze, for a simulator without the Coze persona."""
        faults = self.emu.coze
        if faults.silence:
            await asyncio.Event().wait()  # never: the request's timer ends it
        await asyncio.sleep(self.emu.settings.reply_delay + faults.delay)
        if faults.error:
            text = COZE_ERROR_TEXT
        elif faults.daily_limit:
            text = COZE_USER_DAILY_LIMIT_TEXT
        elif image:
            text = f"![image]({IMAGE_URL})"
        else:
            text = f"This is the simulated Coze bot answering: {prompt[-120:]}"
        try:
            data = await self.emu.process.client.request(
                "POST", f"/channels/{channel_id}/messages", {"content": text}
            )
        except GoError:  # Coze could not answer: the request runs into its timeout
            await asyncio.Event().wait()
        message_id = str(data["id"])
        steps = self.emu.settings.stream_chunks
        for i in range(1, steps + 1):
            if i > 1:
                await asyncio.sleep(self.emu.settings.stream_chunk_delay)
            yield Reply(message_id, text[: len(text) * i // steps])
        yield Reply(message_id, text, list(SUGGESTIONS))
