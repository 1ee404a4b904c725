"""The Discord simulator answers the way Discord's own OpenAPI description says."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from monitor.clock import FakeClock
from monitor.discord.snowflake import snowflake_time
from monitor.sim.discord import DiscordSimulator, RouteLimit, SimSettings
from tests.helpers.openapi import spec_request, validate_exchange
from tests.helpers.sim import put_faults, seed

UA = "DiscordBot (https://example.invalid, 1.0)"
RATE_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Reset-After",
    "X-RateLimit-Bucket",
)


async def call(
    http: aiohttp.ClientSession,
    sim: DiscordSimulator,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: dict[str, str] | None = None,
    token: str | None = "sim-token",
) -> tuple[int, Any, dict[str, str]]:
    """Send one request to the simulator and validate the exchange against the spec."""
    headers = (
        {"User-Agent": UA} if token is None else {"Authorization": f"Bot {token}", "User-Agent": UA}
    )
    async with http.request(
        method, sim.api_base + path, json=body, params=query, headers=headers
    ) as resp:
        raw = await resp.read()
        resp_headers = dict(resp.headers)
        status = resp.status
    if status < 500:  # Discord's description documents no 5xx answers
        request = spec_request(method, path, query=query, body=body, headers=headers)
        validate_exchange(request, status, raw, resp_headers)
    return status, (await _json(raw)), resp_headers


async def _json(raw: bytes) -> Any:
    import json

    return json.loads(raw) if raw else None


async def test_gateway_endpoints_conform(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    status, body, headers = await call(http, discord_sim, "GET", "/gateway", token=None)
    assert status == 200 and body["url"] == discord_sim.gateway_url
    status, body, headers = await call(http, discord_sim, "GET", "/gateway/bot")
    assert status == 200
    assert body["session_start_limit"]["remaining"] == 1000
    assert all(h in headers for h in RATE_HEADERS)


async def test_users_me_conforms(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    status, body, _ = await call(http, discord_sim, "GET", "/users/@me")
    assert status == 200 and body["bot"] is True


async def test_every_endpoint_answers_401_like_discord(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    g = discord_sim.settings.guild_id
    (cid,) = await seed(http, discord_sim, count=1)
    endpoints = [
        ("GET", "/gateway/bot", None),
        ("GET", "/users/@me", None),
        ("GET", f"/guilds/{g}/channels", None),
        ("POST", f"/guilds/{g}/channels", {"name": "x"}),
        ("GET", f"/channels/{cid}", None),
        ("DELETE", f"/channels/{cid}", None),
        ("GET", f"/channels/{cid}/messages", None),
        ("POST", f"/channels/{cid}/messages", {"content": "hi"}),
    ]
    for method, path, body in endpoints:
        status, data, _ = await call(http, discord_sim, method, path, body=body, token="wrong")
        assert status == 401, (method, path)
        assert data == {"message": "401: Unauthorized", "code": 0}
    assert discord_sim.state.invalid_requests == len(endpoints)
    assert cid in {c["id"] for c in discord_sim.state.snapshot()["channels"]}


async def test_channel_lifecycle_conforms(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    g = discord_sim.settings.guild_id
    before = discord_sim.clock.time()
    status, created, headers = await call(
        http, discord_sim, "POST", f"/guilds/{g}/channels", body={"name": "CDP-Chat-Ab12 X"}
    )
    assert status == 201
    assert created["name"] == "cdp-chat-ab12-x"  # Discord lowercases text channel names
    assert created["last_message_id"] is None
    assert snowflake_time(created["id"]) >= before - 0.001
    assert all(h in headers for h in RATE_HEADERS)
    cid = created["id"]

    status, listed, _ = await call(http, discord_sim, "GET", f"/guilds/{g}/channels")
    assert status == 200 and [c["id"] for c in listed] == [cid]

    status, msg, _ = await call(
        http, discord_sim, "POST", f"/channels/{cid}/messages", body={"content": "hello"}
    )
    assert status == 200 and msg["content"] == "hello"
    status, channel, _ = await call(http, discord_sim, "GET", f"/channels/{cid}")
    assert channel["last_message_id"] == msg["id"]
    status, msgs, _ = await call(
        http, discord_sim, "GET", f"/channels/{cid}/messages", query={"limit": "10"}
    )
    assert [m["id"] for m in msgs] == [msg["id"]]

    status, deleted, _ = await call(http, discord_sim, "DELETE", f"/channels/{cid}")
    assert status == 200 and deleted["id"] == cid
    status, err, _ = await call(http, discord_sim, "GET", f"/channels/{cid}")
    assert status == 404 and err["code"] == 10003
    status, err, _ = await call(http, discord_sim, "DELETE", f"/channels/{cid}")
    assert status == 404 and err["code"] == 10003


async def test_unknown_guild_is_404_10004(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    status, err, _ = await call(http, discord_sim, "GET", "/guilds/42/channels")
    assert status == 404 and err == {"message": "Unknown Guild", "code": 10004}


@pytest.mark.parametrize(
    ("path_kind", "body", "field"),
    [
        ("guild", "not json", "_errors"),
        ("guild", ["a", "list"], "_errors"),
        ("guild", {"name": ""}, "name"),
        ("guild", {"name": "x" * 101}, "name"),
        ("guild", {"name": "ok", "type": 99}, "type"),
        ("guild", {"name": "ok", "parent_id": "abc"}, "parent_id"),
        ("message", {"content": "x" * 2001}, "content"),
        ("message", {"content": 5}, "content"),
    ],
)
async def test_malformed_bodies_get_50035(
    http: aiohttp.ClientSession,
    discord_sim: DiscordSimulator,
    path_kind: str,
    body: Any,
    field: str,
) -> None:
    (cid,) = await seed(http, discord_sim, count=1, prefix="general-")
    g = discord_sim.settings.guild_id
    url = f"/guilds/{g}/channels" if path_kind == "guild" else f"/channels/{cid}/messages"
    headers = {"Authorization": "Bot sim-token", "Content-Type": "application/json"}
    raw_body = body.encode() if isinstance(body, str) else None
    async with http.post(
        discord_sim.api_base + url,
        data=raw_body,
        json=None if raw_body is not None else body,
        headers=headers,
    ) as resp:
        raw = await resp.read()
        assert resp.status == 400
        # Discord's spec rejects invalid bodies, so validate the answer for a valid request.
        ok_body = {"name": "x"} if path_kind == "guild" else {"content": "x"}
        validate_exchange(spec_request("POST", url, body=ok_body), 400, raw, dict(resp.headers))
    data = await _json(raw)
    assert data["code"] == 50035 and data["message"] == "Invalid Form Body"
    assert field in data["errors"]
    # The simulator is still alive and unchanged.
    status, listed, _ = await call(http, discord_sim, "GET", f"/guilds/{g}/channels")
    assert status == 200 and [c["id"] for c in listed] == [cid]


async def test_bad_limit_query_is_50035(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    (cid,) = await seed(http, discord_sim, count=1)
    async with http.get(
        f"{discord_sim.api_base}/channels/{cid}/messages?limit=500",
        headers={"Authorization": "Bot sim-token"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == 50035


@pytest.fixture
def small_limit_settings() -> SimSettings:
    return SimSettings(channel_limit=5)


async def test_channel_limit_30013(
    http: aiohttp.ClientSession, small_limit_settings: SimSettings
) -> None:
    sim = DiscordSimulator(small_limit_settings)
    await sim.start()
    try:
        await seed(http, sim, count=4, type=0)
        await seed(http, sim, count=1, type=4, prefix="category-")  # categories count too
        g = sim.settings.guild_id
        status, err, _ = await call(
            http, sim, "POST", f"/guilds/{g}/channels", body={"name": "one-more"}
        )
        assert status == 400
        assert err == {"code": 30013, "message": "Maximum number of server channels reached (5)"}
        assert len(sim.state.channels) == 5
    finally:
        await sim.stop()


async def test_route_bucket_429_conforms_and_is_keyed_by_major_parameter(
    http: aiohttp.ClientSession,
) -> None:
    limits = {"GET /channels/{channel_id}": RouteLimit("bkt", 2, 60.0)}
    sim = DiscordSimulator(SimSettings(route_limits=limits))
    await sim.start()
    try:
        a, b = await seed(http, sim, count=2)
        statuses = [(await call(http, sim, "GET", f"/channels/{a}"))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        status, body, headers = await call(http, sim, "GET", f"/channels/{a}")
        assert status == 429
        assert body["global"] is False and 0 < body["retry_after"] <= 60
        assert headers["X-RateLimit-Scope"] == "user"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert headers["X-RateLimit-Bucket"] == "bkt"
        assert int(headers["Retry-After"]) >= 1
        # Another channel id is another bucket.
        status, _, headers = await call(http, sim, "GET", f"/channels/{b}")
        assert status == 200 and headers["X-RateLimit-Remaining"] == "1"
        assert sim.state.ratelimited["user"] == 2
        assert sim.state.invalid_requests == 2
    finally:
        await sim.stop()


async def test_bucket_window_resets_with_injected_clock(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    limits = {"GET /users/@me": RouteLimit("me", 1, 5.0)}
    sim = DiscordSimulator(SimSettings(route_limits=limits), clock=clock)
    await sim.start()
    try:
        assert (await call(http, sim, "GET", "/users/@me"))[0] == 200
        assert (await call(http, sim, "GET", "/users/@me"))[0] == 429
        clock.advance(5.0)
        status, _, headers = await call(http, sim, "GET", "/users/@me")
        assert status == 200 and headers["X-RateLimit-Reset-After"] == "5.000"
    finally:
        await sim.stop()


async def test_global_limit_429_conforms(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    sim = DiscordSimulator(SimSettings(global_limit=3), clock=clock)
    await sim.start()
    try:
        g = sim.settings.guild_id
        ids = await seed(http, sim, count=4)
        statuses = [(await call(http, sim, "GET", f"/channels/{i}"))[0] for i in ids]
        assert statuses == [200, 200, 200, 429]
        status, body, headers = await call(http, sim, "GET", f"/guilds/{g}/channels")
        assert status == 429 and body["global"] is True
        assert headers["X-RateLimit-Global"] == "true"
        assert headers["X-RateLimit-Scope"] == "global"
        clock.advance(1.0)
        assert (await call(http, sim, "GET", f"/guilds/{g}/channels"))[0] == 200
        assert sim.state.ratelimited["global"] == 2
    finally:
        await sim.stop()


async def test_shared_429_is_not_an_invalid_request(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    async with http.put(
        f"{discord_sim.admin_url}/faults", json={"rest": {"shared_429_rate": 1.0}}
    ) as r:
        assert r.status == 200
    status, body, headers = await call(http, discord_sim, "GET", "/users/@me")
    assert status == 429 and headers["X-RateLimit-Scope"] == "shared" and body["global"] is False
    assert discord_sim.state.invalid_requests == 0


async def test_faults_error_status_route_filter_and_clear(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    g = discord_sim.settings.guild_id
    fault = {
        "rest": {
            "error_rate": 1.0,
            "error_status": 503,
            "routes": ["POST /guilds/{guild_id}/channels"],
        }
    }
    async with http.put(f"{discord_sim.admin_url}/faults", json=fault) as r:
        assert r.status == 200
    status, body, _ = await call(
        http, discord_sim, "POST", f"/guilds/{g}/channels", body={"name": "a"}
    )
    assert status == 503 and body["code"] == 0
    assert (await call(http, discord_sim, "GET", "/users/@me"))[0] == 200  # other routes untouched
    async with http.delete(f"{discord_sim.admin_url}/faults") as r:
        assert r.status == 200
    assert (await call(http, discord_sim, "POST", f"/guilds/{g}/channels", body={"name": "a"}))[
        0
    ] == 201


async def test_fault_502_is_html_like_cloudflare(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await put_faults(http, discord_sim, rest={"error_rate": 1.0, "error_status": 502})
    async with http.get(
        f"{discord_sim.api_base}/users/@me", headers={"Authorization": "Bot sim-token"}
    ) as r:
        assert r.status == 502 and r.content_type == "text/html"


async def test_connection_reset_fault(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await put_faults(http, discord_sim, rest={"reset_rate": 1.0})
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(
            f"{discord_sim.api_base}/users/@me", headers={"Authorization": "Bot sim-token"}
        ):
            pass
    async with http.get(f"{discord_sim.admin_url}/state") as r:  # still serving
        assert r.status == 200


async def test_admin_api_rejects_bad_ids_and_numbers(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    async with http.post(f"{discord_sim.admin_url}/channels/abc/messages", json={}) as r:
        assert r.status == 404 and "error" in await r.json()
    async with http.get(f"{discord_sim.admin_url}/requests?since=soon") as r:
        assert r.status == 400 and "error" in await r.json()


async def test_bad_fault_bodies_are_400_and_change_nothing(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    for bad in ({"rest": {"nope": 1}}, {"other": {}}, [1, 2]):
        async with http.put(f"{discord_sim.admin_url}/faults", json=bad) as r:
            assert r.status == 400 and "error" in await r.json()
    async with http.put(f"{discord_sim.admin_url}/faults", data=b"{not json") as r:
        assert r.status == 400
    async with http.get(f"{discord_sim.admin_url}/faults") as r:
        faults = await r.json()
    assert faults["rest"]["error_rate"] == 0.0 and faults["gateway"]["refuse"] is False


async def test_seed_with_age_messages_and_admin_message(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    now = discord_sim.clock.time()
    ids = await seed(http, discord_sim, count=3, prefix="cdp-chat-", messages=2, age_seconds=3600)
    state = discord_sim.state.snapshot()
    assert len(state["channels"]) == 3
    for c in state["channels"]:
        assert c["name"].startswith("cdp-chat-") and c["message_count"] == 2
        assert now - 3605 <= snowflake_time(c["id"]) <= now - 3595
    async with http.post(
        f"{discord_sim.admin_url}/channels/{ids[0]}/messages", json={"content": "hey"}
    ) as r:
        assert r.status == 200
    assert len(discord_sim.state.channels[int(ids[0])].messages) == 3


async def test_seeding_past_the_limit_reports_what_was_created(http: aiohttp.ClientSession) -> None:
    sim = DiscordSimulator(SimSettings(channel_limit=3))
    await sim.start()
    try:
        async with http.post(
            f"{sim.admin_url}/guilds/{sim.settings.guild_id}/channels", json={"count": 5}
        ) as r:
            data = await r.json()
        assert r.status == 400 and data["code"] == 30013 and len(data["channels"]) == 3
    finally:
        await sim.stop()


async def test_threads_are_not_listed_in_guild_channels(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await seed(http, discord_sim, count=2, type=11, prefix="cdp-chat-thread-")
    text = await seed(http, discord_sim, count=1)
    _status, listed, _ = await call(
        http, discord_sim, "GET", f"/guilds/{discord_sim.settings.guild_id}/channels"
    )
    assert [c["id"] for c in listed] == text


async def test_state_counts_requests_by_route_template(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    ids = await seed(http, discord_sim, count=2)
    for cid in ids:
        await call(http, discord_sim, "GET", f"/channels/{cid}")
    async with http.get(f"{discord_sim.admin_url}/state") as r:
        state = await r.json()
    assert state["requests"]["GET /channels/{channel_id}"] == {"200": 2}
    assert state["total_requests"] == 2


async def test_same_seed_same_faults(http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        sim = DiscordSimulator(SimSettings(seed=7, route_limits={}))
        await sim.start()
        try:
            await put_faults(http, sim, rest={"error_rate": 0.5})
            run = []
            for _ in range(20):
                async with http.get(sim.api_base + "/gateway") as r:
                    run.append(r.status)
            outcomes.append(run)
        finally:
            await sim.stop()
    assert outcomes[0] == outcomes[1] and set(outcomes[0]) == {200, 500}


async def test_gateway_hello_ack_identify_ready(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    async with http.ws_connect(discord_sim.gateway_url + "/?v=10&encoding=json") as ws:
        hello = await ws.receive_json()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41250
        await ws.send_json({"op": 1, "d": None})
        assert await ws.receive_json() == {"op": 11, "d": None}
        await ws.send_json({"op": 2, "d": {"token": "sim-token", "intents": 0, "properties": {}}})
        ready = await ws.receive_json()
        assert ready["t"] == "READY" and ready["op"] == 0
        await ws.send_str("not json")
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4002
    gw = discord_sim.state.snapshot()["gateway"]
    assert gw["identifies"] == 1 and gw["heartbeats"] == 1 and gw["connections"] == 1
    _status, body, _ = await call(http, discord_sim, "GET", "/gateway/bot")
    assert body["session_start_limit"]["remaining"] == 999  # an IDENTIFY spends a session start


async def test_gateway_faults(http: aiohttp.ClientSession, discord_sim: DiscordSimulator) -> None:
    await put_faults(http, discord_sim, gateway={"close_code": 4000})
    async with http.ws_connect(discord_sim.gateway_url + "/?v=10&encoding=json") as ws:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000
    await put_faults(http, discord_sim, gateway={"close_code": None, "refuse": True})
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(discord_sim.gateway_url + "/?v=10&encoding=json")
    assert discord_sim.state.gateway["refused"] == 1
