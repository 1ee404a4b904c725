"""discord.py, a Discord client no one here wrote, lives in the simulator: its
`HTTPClient` (login, gateway/bot, channels, messages, rate limits, errors) and its full
`Client` (READY, channel events, the Coze persona's reply to a user's message).

discord.py builds REST URLs from `discord.http.Route.BASE` and a plain `Client` connects to
`DiscordWebSocket.DEFAULT_GATEWAY`; both are pointed at the simulator for a test and put
back after it."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import yarl

with warnings.catch_warnings():  # discord.player imports audioop (deprecated in 3.11)
    warnings.simplefilter("ignore", DeprecationWarning)
    import discord
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route, handle_message_parameters

from monitor.sim.discord import DEFAULT_ROUTE_LIMITS, DiscordSimulator, RouteLimit, SimSettings
from tests.helpers.sim import put_faults

MESSAGES = "POST /channels/{channel_id}/messages"


@pytest.fixture
def sim_settings() -> SimSettings:
    limits = dict(DEFAULT_ROUTE_LIMITS)
    limits[MESSAGES] = RouteLimit(DEFAULT_ROUTE_LIMITS[MESSAGES].bucket, 3, 0.5)
    return SimSettings(global_limit=5, route_limits=limits)


@pytest.fixture
def pointed_at(discord_sim: DiscordSimulator) -> Iterator[DiscordSimulator]:
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = discord_sim.api_base
    try:
        yield discord_sim
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


@pytest.fixture
async def dpy_http(pointed_at: DiscordSimulator) -> AsyncIterator[HTTPClient]:
    client = HTTPClient(asyncio.get_running_loop())
    await client.static_login("sim-token")
    try:
        yield client
    finally:
        await client.close()


async def send(client: HTTPClient, channel_id: str, content: str) -> Any:
    with handle_message_parameters(content=content) as params:
        return await client.send_message(channel_id, params=params)


async def test_http_client_login_gateway_channels_messages(
    dpy_http: HTTPClient, pointed_at: DiscordSimulator
) -> None:
    sim = pointed_at
    shards, url, limit = await dpy_http.get_bot_gateway()
    assert (shards, url) == (1, sim.gateway_url)
    assert limit["remaining"] == 1000 and limit["max_concurrency"] == 1
    g = sim.settings.guild_id
    created = await dpy_http.create_channel(g, 0, name="Hello World")
    assert created["name"] == "hello-world"
    listed = await dpy_http.get_all_guild_channels(g)
    assert [c["id"] for c in listed] == [created["id"]]
    message = await send(dpy_http, created["id"], "hi")
    assert message["content"] == "hi" and message["author"]["bot"] is True
    await dpy_http.delete_channel(created["id"])
    assert await dpy_http.get_all_guild_channels(g) == []


async def test_http_client_unknown_channel_is_not_found(dpy_http: HTTPClient) -> None:
    with pytest.raises(discord.NotFound) as caught:
        await dpy_http.get_channel(1234)
    assert caught.value.code == 10003 and caught.value.status == 404


async def test_http_client_waits_out_route_and_global_limits(
    dpy_http: HTTPClient, pointed_at: DiscordSimulator
) -> None:
    """10 messages over two channels: 3 per 0.5 s per channel, 5 per second in all."""
    sim = pointed_at
    g = sim.settings.guild_id
    channels = [(await dpy_http.create_channel(g, 0, name=f"c{i}"))["id"] for i in range(2)]
    await asyncio.gather(*(send(dpy_http, channels[i % 2], f"m{i}") for i in range(10)))
    posted = sorted(m.content for c in sim.state.channels.values() for m in c.messages)
    assert posted == sorted(f"m{i}" for i in range(10))  # each sent once, none lost
    assert sim.state.requests[(MESSAGES, 200)] == 10
    assert sim.state.ratelimited["global"] > 0  # it had to wait out the global limit


async def test_http_client_sees_a_cloudflare_ban_as_one(
    dpy_http: HTTPClient, pointed_at: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    await put_faults(http, pointed_at, rest={"cloudflare_ban_s": 3600})
    with pytest.raises(discord.HTTPException) as caught:
        await dpy_http.get_all_guild_channels(pointed_at.settings.guild_id)
    assert caught.value.status == 429 and caught.value.text == "error code: 1015"
    assert pointed_at.state.requests[("cloudflare-ban", 429)] == 1  # raised, not retried


class Recorder(discord.Client):
    """A full discord.py client that notes what the gateway told it."""

    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default())
        self.ready = asyncio.Event()
        self.created: asyncio.Queue[discord.abc.GuildChannel] = asyncio.Queue()
        self.messages: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.edits: asyncio.Queue[discord.RawMessageUpdateEvent] = asyncio.Queue()

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_guild_channel_create(self, channel: discord.abc.GuildChannel) -> None:
        self.created.put_nowait(channel)

    async def on_message(self, message: discord.Message) -> None:
        self.messages.put_nowait(message)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.edits.put_nowait(payload)


@pytest.fixture
async def full_client(pointed_at: DiscordSimulator) -> AsyncIterator[Recorder]:
    client = Recorder()
    await client.login("sim-token")
    _shards, url, _limit = await client.http.get_bot_gateway()
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)  # restored by `pointed_at`
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(client.ready.wait(), 10)
        yield client
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)


async def test_client_ready_and_channel_create_over_rest(
    full_client: Recorder, pointed_at: DiscordSimulator
) -> None:
    guild = full_client.get_guild(pointed_at.settings.guild_id)
    assert guild is not None and full_client.user is not None
    assert full_client.user.id == pointed_at.settings.bot_user_id
    assert full_client.application_id == pointed_at.settings.bot_user_id
    await full_client.http.create_channel(guild.id, 0, name="from-rest")
    channel = await asyncio.wait_for(full_client.created.get(), 10)
    assert channel.name == "from-rest" and channel.guild.id == guild.id


async def test_client_sees_coze_reply_to_a_user_token_message(
    full_client: Recorder, pointed_at: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    sim = pointed_at
    created = await full_client.http.create_channel(sim.settings.guild_id, 0, name="chat")
    headers = {"Authorization": sim.settings.user_tokens[0], "User-Agent": "Mozilla/5.0"}
    body = {"content": f"<@{sim.settings.coze_bot_id}> hello"}
    url = f"{sim.api_base}/channels/{created['id']}/messages"
    async with http.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        prompt_id = int((await resp.json())["id"])
    prompt = await asyncio.wait_for(full_client.messages.get(), 10)
    assert prompt.id == prompt_id and not prompt.author.bot
    reply = await asyncio.wait_for(full_client.messages.get(), 10)
    assert reply.author.id == sim.settings.coze_bot_id
    assert reply.reference is not None and reply.reference.message_id == prompt_id
    edit = await asyncio.wait_for(full_client.edits.get(), 10)
    assert edit.message_id == reply.id
    final = await asyncio.wait_for(full_client.messages.get(), 10)
    assert final.reference is not None and final.reference.message_id == prompt_id
    assert final.components and final.components[0].children  # Auto-Suggestion buttons


async def test_auto_sharded_client_gets_shard_in_ready(pointed_at: DiscordSimulator) -> None:
    client = discord.AutoShardedClient(intents=discord.Intents.default())
    ready = asyncio.Event()
    client.event(_setter(ready, "on_ready"))
    await client.login("sim-token")
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert client.shard_count == 1 and client.get_guild(pointed_at.settings.guild_id)
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)


def _setter(event: asyncio.Event, name: str) -> Any:
    async def handler() -> None:
        event.set()

    handler.__name__ = name
    return handler


async def test_client_resumes_after_op7_and_misses_nothing(
    pointed_at: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    sim = pointed_at
    await put_faults(http, sim, gateway={"reconnect": True})  # op 7 after READY, RESUMED
    client = Recorder()
    resumed = asyncio.Event()
    client.event(_setter(resumed, "on_resumed"))
    await client.login("sim-token")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sim.gateway_url)
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(resumed.wait(), 10)
        await put_faults(http, sim, gateway={"reconnect": False})
        await client.http.create_channel(sim.settings.guild_id, 0, name="after-resume")
        channel = await asyncio.wait_for(client.created.get(), 10)
        assert channel.name == "after-resume"
        assert sim.state.gateway["identifies"] == 1 and sim.state.gateway["resumes"] >= 1
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)
