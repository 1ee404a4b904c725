"""The simulator's bytes, faults and identities, as Discord has them: exact JSON
Content-Type and `Via`, 405, /api/v9, Cloudflare's answers (User-Agent blocks, bans),
403s, shared 429s of any length, the invalid-request ban, the daily create cap, listings
without `last_message_id`, user tokens, and the Coze bot persona's streamed replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from monitor.clock import FakeClock
from monitor.sim.discord import DiscordSimulator, SimSettings
from tests.helpers.sim import put_faults, seed

UA = "DiscordBot (https://example.invalid, 1.0)"
BOT = {"Authorization": "Bot sim-token", "User-Agent": UA}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Bucket", "X-RateLimit-Scope")


async def req(
    http: aiohttp.ClientSession,
    sim: DiscordSimulator,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    base: str | None = None,
    **kwargs: Any,
) -> tuple[int, bytes, dict[str, str]]:
    url = (base or sim.api_base) + path
    async with http.request(
        method, url, headers=BOT if headers is None else headers, **kwargs
    ) as r:
        return r.status, await r.read(), dict(r.headers)


@pytest.fixture
async def clocked() -> AsyncIterator[DiscordSimulator]:
    sim = DiscordSimulator(
        SimSettings(daily_channel_create_cap=2, invalid_request_limit=3), clock=FakeClock()
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def test_json_bytes_exact_on_v9_and_v10(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    g = discord_sim.settings.guild_id
    for base in (discord_sim.base_url + "/api/v9", discord_sim.api_base):
        for path in ("/gateway/bot", "/users/@me", f"/guilds/{g}/channels", "/channels/1"):
            status, _body, headers = await req(http, discord_sim, "GET", path, base=base)
            assert status in (200, 404), path
            assert headers["Content-Type"] == "application/json"
            assert headers["Via"] == "1.1 google"
    status, body, headers = await req(http, discord_sim, "GET", "/oauth2/applications/@me")
    assert status == 200 and b'"verify_key"' in body and headers["Via"] == "1.1 google"


async def test_wrong_method_is_405(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    status, body, headers = await req(http, discord_sim, "PUT", "/channels/123")
    assert status == 405 and headers["Content-Type"] == "application/json"
    assert body == b'{"message": "405: Method Not Allowed", "code": 0}'


@pytest.mark.parametrize("agent", [None, "Mozilla/5.0 (X11; Linux x86_64)"])
async def test_cloudflare_blocks_bot_requests_without_a_bot_user_agent(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator, agent: str | None
) -> None:
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as bare:
        headers = {"Authorization": "Bot sim-token"}
        if agent is not None:
            headers["User-Agent"] = agent
        status, body, resp_headers = await req(
            bare, discord_sim, "GET", "/users/@me", headers=headers
        )
    assert status == 403 and b"40333" in body and "Via" not in resp_headers
    assert discord_sim.state.invalid_requests == 1


async def test_json_bodies_need_a_json_content_type(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    g = discord_sim.settings.guild_id
    status, body, _ = await req(
        http,
        discord_sim,
        "POST",
        f"/guilds/{g}/channels",
        data=b'{"name": "x"}',
        headers={**BOT, "Content-Type": "text/plain"},
    )
    assert status == 400 and b'"code": "CONTENT_TYPE_INVALID"' in body
    status, body, _ = await req(
        http, discord_sim, "POST", f"/guilds/{g}/channels", json={"name": ""}
    )
    assert status == 400 and b'"code": "BASE_TYPE_BAD_LENGTH"' in body  # string codes


@pytest.mark.parametrize(
    ("code", "message"), [(50001, "Missing Access"), (50013, "Missing Permissions")]
)
async def test_forbidden_fault(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator, code: int, message: str
) -> None:
    await put_faults(http, discord_sim, rest={"forbidden_rate": 1.0, "forbidden_code": code})
    status, body, headers = await req(http, discord_sim, "GET", "/channels/1")
    assert status == 403 and headers["Via"] == "1.1 google"
    assert body == f'{{"message": "{message}", "code": {code}}}'.encode()


async def test_shared_429_with_any_retry_after(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    faults = {"shared_429_rate": 1.0, "shared_429_retry_after": 1336.57}
    await put_faults(http, discord_sim, rest=faults)
    status, body, headers = await req(http, discord_sim, "GET", "/users/@me")
    assert status == 429 and b'"retry_after": 1336.57' in body
    assert headers["X-RateLimit-Scope"] == "shared" and headers["Via"] == "1.1 google"
    assert discord_sim.state.invalid_requests == 0


def assert_banned(status: int, body: bytes, headers: dict[str, str]) -> None:
    assert (status, body) == (429, b"error code: 1015")
    assert headers["Content-Type"].startswith("text/plain")
    assert "Via" not in headers and not any(h in headers for h in RATE_HEADERS)


async def test_cloudflare_ban_fault_bans_every_route_until_lifted(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await put_faults(http, discord_sim, rest={"cloudflare_ban_s": 3600})
    g = discord_sim.settings.guild_id
    for method, path in (("GET", "/gateway"), ("GET", f"/guilds/{g}/channels"), ("GET", "/nope")):
        assert_banned(*await req(http, discord_sim, method, path))
    async with http.get(discord_sim.admin_url + "/state") as resp:
        assert resp.status == 200  # the admin API is not banned
    async with http.ws_connect(discord_sim.gateway_url + "/?v=10&encoding=json") as ws:
        assert (await ws.receive_json())["op"] == 10  # nor is the gateway
    async with http.delete(discord_sim.admin_url + "/faults") as resp:
        assert resp.status == 200
    assert (await req(http, discord_sim, "GET", "/gateway"))[0] == 200


async def test_invalid_request_ban_when_configured(
    http: aiohttp.ClientSession, clocked: DiscordSimulator
) -> None:
    wrong = {"Authorization": "Bot wrong", "User-Agent": UA}
    for _ in range(3):
        assert (await req(http, clocked, "GET", "/users/@me", headers=wrong))[0] == 401
    assert_banned(*await req(http, clocked, "GET", "/users/@me"))
    assert isinstance(clocked.clock, FakeClock)
    clocked.clock.advance(3600)  # Cloudflare's ban lasts about an hour
    assert (await req(http, clocked, "GET", "/users/@me"))[0] == 200


async def test_daily_channel_create_cap(
    http: aiohttp.ClientSession, clocked: DiscordSimulator
) -> None:
    path = f"/guilds/{clocked.settings.guild_id}/channels"
    for i in range(2):
        assert (await req(http, clocked, "POST", path, json={"name": f"c{i}"}))[0] == 201
    status, body, headers = await req(http, clocked, "POST", path, json={"name": "c2"})
    assert status == 429 and headers["X-RateLimit-Scope"] == "shared"
    assert b'"retry_after": 86400.0' in body
    assert isinstance(clocked.clock, FakeClock)
    clocked.clock.advance(86_400)
    assert (await req(http, clocked, "POST", path, json={"name": "c2"}))[0] == 201


async def test_listing_without_last_message_id(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await seed(http, discord_sim, count=1, messages=1)
    path = f"/guilds/{discord_sim.settings.guild_id}/channels"
    assert b"last_message_id" in (await req(http, discord_sim, "GET", path))[1]
    await put_faults(http, discord_sim, rest={"omit_last_message_id": True})
    assert b"last_message_id" not in (await req(http, discord_sim, "GET", path))[1]


async def test_user_tokens(http: aiohttp.ClientSession, discord_sim: DiscordSimulator) -> None:
    [cid] = await seed(http, discord_sim, count=1)
    user = {"Authorization": "sim-user-token", "User-Agent": "Mozilla/5.0"}
    status, body, _ = await req(
        http, discord_sim, "POST", f"/channels/{cid}/messages", headers=user, json={"content": "hi"}
    )
    assert status == 200 and b'"bot"' not in body
    stranger = {"Authorization": "not-a-token", "User-Agent": "Mozilla/5.0"}
    status, _, _ = await req(
        http,
        discord_sim,
        "POST",
        f"/channels/{cid}/messages",
        headers=stranger,
        json={"content": "x"},
    )
    assert status == 401
    path = f"/guilds/{discord_sim.settings.guild_id}/channels"
    status, body, _ = await req(http, discord_sim, "POST", path, headers=user, json={"name": "x"})
    assert status == 403 and b"50001" in body


async def coze_exchange(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> tuple[str, list[dict[str, Any]]]:
    """A user mentions the Coze persona; returns the prompt id and the dispatches seen
    until a message with components (on a GUILD_MESSAGES session)."""
    [cid] = await seed(http, sim, count=1)
    async with http.ws_connect(sim.gateway_url + "/?v=10&encoding=json") as ws:
        await ws.receive_json()
        d = {"token": "sim-token", "intents": 1 << 9, "properties": {}}
        await ws.send_json({"op": 2, "d": d})
        assert (await ws.receive_json())["t"] == "READY"
        user = {"Authorization": "sim-user-token", "User-Agent": "Mozilla/5.0"}
        body = {"content": f"<@{sim.settings.coze_bot_id}> tell me"}
        status, raw, _ = await req(
            http, sim, "POST", f"/channels/{cid}/messages", headers=user, json=body
        )
        assert status == 200
        seen: list[dict[str, Any]] = []
        while not seen or not seen[-1]["d"]["components"]:
            seen.append(await ws.receive_json())
    import json

    return json.loads(raw)["id"], seen


async def test_coze_reply_streams_then_components(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    prompt_id, seen = await coze_exchange(http, discord_sim)
    kinds = [p["t"] for p in seen]
    assert kinds[0] == "MESSAGE_CREATE" and seen[0]["d"]["id"] == prompt_id
    assert kinds[1] == "MESSAGE_CREATE" and kinds[-1] == "MESSAGE_CREATE"
    assert set(kinds[2:-1]) == {"MESSAGE_UPDATE"} and len(kinds[2:-1]) == 3
    reply_id = seen[1]["d"]["id"]
    for p in seen[1:]:
        assert p["d"]["message_reference"]["message_id"] == prompt_id
        assert p["d"]["author"]["id"] == str(discord_sim.settings.coze_bot_id)
    for update in seen[2:-1]:
        assert update["d"]["id"] == reply_id and update["d"]["edited_timestamp"]
    assert len(seen[-2]["d"]["content"]) == discord_sim.settings.coze_reply_length


async def test_coze_components_as_last_edit(http: aiohttp.ClientSession) -> None:
    sim = DiscordSimulator(SimSettings(coze_components_as_edit=True))
    await sim.start()
    try:
        _prompt, seen = await coze_exchange(http, sim)
    finally:
        await sim.stop()
    assert seen[-1]["t"] == "MESSAGE_UPDATE" and seen[-1]["d"]["components"]


async def test_coze_faults_silence_and_error(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await put_faults(http, discord_sim, coze={"silence": True})
    [cid] = await seed(http, discord_sim, count=1)
    channel = discord_sim.state.channels[int(cid)]
    discord_sim.add_message(channel, f"<@{discord_sim.settings.coze_bot_id}> hi")
    assert not discord_sim.coze._tasks  # silent: no answer is even started
    await put_faults(http, discord_sim, coze={"silence": False, "error": True, "delay_ms": 1})
    _prompt, seen = await coze_exchange(http, discord_sim)
    assert seen[-2]["d"]["content"].startswith("Something went wrong")
