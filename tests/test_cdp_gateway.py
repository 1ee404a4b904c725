"""CDP's reply path over its own gateway session (CDP-FACTS.md section 6), against a
scripted Discord: IDENTIFY with discordgo's intents, replies matched to the prompt by
its referenced message, streamed by MESSAGE_UPDATE, ended by the components message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.httpserve import start_site
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.cdp.gateway import INTENTS_ALL_WITHOUT_PRIVILEGED
from tests.test_cdp_emulator import CHAT, eventually

BOT_ID, COZE_ID = "500", "600"


class ScriptedDiscord:
    """Just enough Discord for one conversation; Coze answers every prompt."""

    def __init__(self) -> None:
        self.identify: dict[str, Any] | None = None
        self.ws: web.WebSocketResponse | None = None
        self.next_id = 1000
        self.prompt_auth: list[str] = []
        self.silent = False

    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/api/v10/gateway", self.gateway_url)
        r.add_get("/ws", self.gateway)
        r.add_post("/api/v10/guilds/{gid}/channels", self.create)
        r.add_get("/api/v10/channels/{cid}", self.get_channel)
        r.add_delete("/api/v10/channels/{cid}", self.get_channel)
        r.add_post("/api/v10/channels/{cid}/messages", self.message)
        return app

    async def gateway_url(self, request: web.Request) -> web.Response:
        return web.json_response({"url": f"ws://{request.host}/ws"})

    async def gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None})
        async for msg in ws:
            data = json.loads(msg.data)
            if data["op"] == 2:
                self.identify = data["d"]
                ready = {"user": {"id": BOT_ID}, "session_id": "s"}
                await ws.send_json({"op": 0, "t": "READY", "s": 1, "d": ready})
                self.ws = ws
        return ws

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"id": self.new_id(), "name": body["name"]}, status=201)

    async def get_channel(self, request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["cid"], "name": "cdp-chat-x"})

    async def message(self, request: web.Request) -> web.Response:
        self.prompt_auth.append(request.headers["Authorization"])
        prompt = {"id": self.new_id(), "content": (await request.json())["content"]}
        if not self.silent:
            asyncio.get_running_loop().create_task(self.coze(request.match_info["cid"], prompt))
        return web.json_response(prompt)

    async def coze(self, channel_id: str, prompt: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)  # the prompt's id must be registered first
        assert self.ws is not None
        reply_id = self.new_id()
        base = {"channel_id": channel_id, "author": {"id": COZE_ID}, "referenced_message": prompt}
        events = [
            ("MESSAGE_CREATE", {**base, "id": reply_id, "content": "Hel"}),
            ("MESSAGE_UPDATE", {**base, "id": reply_id, "content": "Hello"}),
            (
                "MESSAGE_UPDATE",
                {**base, "id": "1", "content": "unrelated", "referenced_message": {"id": "9"}},
            ),
            (
                "MESSAGE_CREATE",
                {
                    **base,
                    "id": self.new_id(),
                    "content": "Hello there",
                    "components": [{"type": 1, "components": [{"type": 2, "label": "More?"}]}],
                },
            ),
        ]
        for seq, (event, data) in enumerate(events, start=2):
            await self.ws.send_json({"op": 0, "t": event, "s": seq, "d": data})


@pytest.fixture
async def world() -> AsyncIterator[tuple[ScriptedDiscord, CdpEmulator]]:
    discord = ScriptedDiscord()
    runner, port = await start_site(discord.app(), "127.0.0.1", 0)
    emu = CdpEmulator(
        CdpSettings(
            discord_api_base=f"http://127.0.0.1:{port}/api/v10",
            guild_id=7,
            user_tokens=("user-token-1",),
            coze_bot_id=COZE_ID,
            gateway=True,
            stay_active_enable="0",
            time_scale=300.0,
        )
    )
    await emu.start()
    await eventually(lambda: discord.ws is not None)
    yield discord, emu
    await emu.stop()
    await runner.cleanup()


async def test_identify_is_discordgos(world: tuple[ScriptedDiscord, CdpEmulator]) -> None:
    discord, _ = world
    assert discord.identify is not None
    assert discord.identify["intents"] == INTENTS_ALL_WITHOUT_PRIVILEGED == 3243773
    assert discord.identify["token"] == "Bot sim-token"
    assert discord.identify["properties"]["browser"] == "DiscordGo v0.27.1"


async def test_a_reply_over_the_gateway_ends_on_components(
    world: tuple[ScriptedDiscord, CdpEmulator], http: aiohttp.ClientSession
) -> None:
    discord, emu = world
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert discord.prompt_auth == ["user-token-1"]  # a user token, raw
    assert body["choices"][0]["message"]["content"] == "Hello there"
    assert body["choices"][0]["finish_reason"] == "stop" and body["suggestions"] == ["More?"]
    async with http.post(
        emu.base_url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        text = (await resp.read()).decode()
    chunks = [json.loads(e.removeprefix("data: ")) for e in text.split("\n\n") if "{" in e]
    # The components message comes twice (discord.go:363 and :395): once as text, once with
    # finish_reason "stop" and nothing new.
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hel", "lo", " there", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert text.endswith("data: [DONE]\n\n")


async def test_silence_is_the_reply_timeout(
    world: tuple[ScriptedDiscord, CdpEmulator], http: aiohttp.ClientSession
) -> None:
    discord, emu = world
    discord.silent = True
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200  # after REQUEST_OUT_TIME (1 s at scale 300)
        assert (await resp.json())["id"] == ""
