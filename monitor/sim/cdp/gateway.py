"""CDP's own gateway session (discordgo `Session.Open`, CDP discord.go:63-84): one per
process, IDENTIFY with `IntentsAllWithoutPrivileged`, heartbeats, and the two handlers
CDP registers, messageCreate and messageUpdate (discord.go:328-495): a message whose
referenced message is a prompt CDP waits on is handed to that request; a message with
components (Coze's Auto-Suggestion buttons) or from CDP's own bot ends it."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import TYPE_CHECKING, Any

import aiohttp

from monitor.sim.cdp.conversation import END, Reply
from monitor.sim.cdp.settings import DISCORDGO_USER_AGENT

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator

INTENTS_ALL_WITHOUT_PRIVILEGED = 3243773  # discordgo structs.go:2392-2407


class GatewaySession:
    """Runs in the process's goroutines; `waiters` maps a prompt's message id to the
    queue of its request (RepliesOpenAIChans + ReplyStopChans)."""

    def __init__(self, emu: CdpEmulator, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session
        self.waiters: dict[str, asyncio.Queue[Reply]] = {}
        self.user_id = ""
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Connect, and reconnect after a second when the connection ends."""
        while True:
            try:
                await self._connect()
            except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                self.emu.gateway_error(f"error connecting to gateway, {exc}")
            await asyncio.sleep(self.emu.settings.scaled(1.0))

    async def _connect(self) -> None:
        base = self.emu.settings.discord_api_base.rstrip("/")
        headers = {"Authorization": f"Bot {self.emu.settings.token}"}
        async with self.session.get(base + "/gateway", headers=headers) as resp:
            url = (await resp.json())["url"]
        ws_headers = {"User-Agent": DISCORDGO_USER_AGENT}
        async with self.session.ws_connect(f"{url}?v=9&encoding=json", headers=ws_headers) as ws:
            heartbeat: asyncio.Task[None] | None = None
            seq: list[int | None] = [None]
            try:
                async for msg in ws:
                    payload = _payload(msg)
                    if payload is None:
                        continue
                    if payload.get("s") is not None:
                        seq[0] = payload["s"]
                    op = payload.get("op")
                    if op == 10:
                        interval = payload["d"]["heartbeat_interval"] / 1000.0
                        heartbeat = asyncio.create_task(_beat(ws, interval, seq))
                        await ws.send_json(self._identify())
                    elif op == 1:
                        await ws.send_json({"op": 1, "d": seq[0]})
                    elif op in (7, 9):
                        return  # reconnect (discordgo resumes or re-identifies)
                    elif op == 0:
                        self._dispatch(str(payload.get("t")), payload.get("d") or {})
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()

    def _identify(self) -> dict[str, Any]:
        return {
            "op": 2,
            "d": {
                "token": f"Bot {self.emu.settings.token}",
                "properties": {"os": "linux", "browser": "DiscordGo v0.27.1", "device": ""},
                "compress": True,
                "large_threshold": 250,
                "intents": INTENTS_ALL_WITHOUT_PRIVILEGED,
            },
        }

    def _dispatch(self, event: str, d: dict[str, Any]) -> None:
        if event == "READY":
            self.user_id = str((d.get("user") or {}).get("id", ""))
            self.ready.set()
        elif event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            self._message(d)

    def _message(self, d: dict[str, Any]) -> None:
        """messageCreate / messageUpdate: only replies to a prompt someone waits on."""
        ref = d.get("referenced_message") or {}
        prompt_id = str(ref.get("id") or (d.get("message_reference") or {}).get("message_id", ""))
        queue = self.waiters.get(prompt_id)
        if not prompt_id or queue is None:
            return
        author = str((d.get("author") or {}).get("id", ""))
        if author == self.user_id:
            queue.put_nowait(END)
            return
        content = str(d.get("content") or "")
        components = d.get("components") or []
        if not components:
            queue.put_nowait(Reply(str(d.get("id")), content))
            return
        buttons = components[0].get("components", []) if isinstance(components[0], dict) else []
        labels = [str(b.get("label", "")) for b in buttons if isinstance(b, dict)]
        queue.put_nowait(Reply(str(d.get("id")), content))
        queue.put_nowait(Reply(str(d.get("id")), content, labels))
        queue.put_nowait(END)


async def _beat(
    ws: aiohttp.ClientWebSocketResponse, interval: float, seq: list[int | None]
) -> None:
    while True:
        await asyncio.sleep(interval)
        await ws.send_json({"op": 1, "d": seq[0]})


def _payload(msg: aiohttp.WSMessage) -> dict[str, Any] | None:
    if msg.type == aiohttp.WSMsgType.TEXT:
        data = json.loads(msg.data)
    elif msg.type == aiohttp.WSMsgType.BINARY:  # identify's compress: zlib payloads
        data = json.loads(zlib.decompress(msg.data))
    else:
        return None
    return data if isinstance(data, dict) else None
