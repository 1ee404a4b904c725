"""What the CDP emulator answers, byte for byte as CDP v4.6.5 (CDP-FACTS.md sections 2
and 4): its 500s that are not Discord's, 401, 404, 429, request ids, timeouts."""

from __future__ import annotations

import json
import re
from datetime import datetime

import aiohttp
import pytest

from monitor.clock import FakeClock
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator
from tests.test_cdp_emulator import CHAT, MakeEmu, cdp_state, chat, lines, make_emu

__all__ = ["make_emu"]


def error_500(message: str) -> bytes:
    body = {"error": {"message": message, "type": "request_error", "param": "", "code": "500"}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "raw",
    [b"", b"{bad", b"[1,2]", b'{"channelId": 5}', b'{"stream": "yes"}', b'{"messages": {}}'],
)
async def test_undecodable_bodies_are_500_invalid_request_parameters(
    make_emu: MakeEmu, http: aiohttp.ClientSession, raw: bytes
) -> None:
    emu = await make_emu()
    async with http.post(emu.base_url + "/v1/chat/completions", data=raw) as resp:
        assert resp.status == 500
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.read() == error_500("Invalid request parameters")
    assert (await cdp_state(http, emu))["create_attempts"] == 0
    assert len(lines(emu, "[ERR]")) == 1


async def test_empty_or_missing_messages_still_create_a_channel(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    assert (await chat(http, emu, {"model": "gpt-4o"}))[0] == 200
    async with http.post(emu.base_url + "/v1/chat/completions", data=b"null") as resp:
        assert resp.status == 200  # Go decodes null into an empty request
    assert (await cdp_state(http, emu))["channels_created"] == 2


async def test_no_user_token_left_is_a_500_before_any_channel(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    async with http.put(emu.admin_url + "/faults", json={"user_tokens": []}) as resp:
        assert resp.status == 200
    status, _, raw = await chat(http, emu)
    assert (status, raw) == (500, error_500("no_available_user_auth"))
    assert lines(emu, "[ERR]")[-1].endswith(" | 无可用的 user_auth ")
    assert (await cdp_state(http, emu))["create_attempts"] == 0


async def test_bot_config_problems_are_500s_before_any_channel(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await http.put(emu.admin_url + "/faults", json={"bot": {"models": ["gpt-4"]}})
    assert (await chat(http, emu))[2] == error_500("model_not_found")
    assert lines(emu, "[ERR]")[-1].endswith("[proxy-secret:]+[model:gpt-4o]未匹配到有效bot ")
    await http.delete(emu.admin_url + "/faults")
    await http.put(emu.admin_url + "/faults", json={"bot": {"missing": True}})
    assert (await chat(http, emu))[2] == error_500("no_available_bot")
    assert (await cdp_state(http, emu))["create_attempts"] == 0


# The three below: the emulator plays Coze (CDP's admin API injects its answers).
async def test_coze_error_text_is_the_500_message_after_a_channel(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(gateway=False)
    await http.put(emu.admin_url + "/faults", json={"coze": {"error": True}})
    status, _, raw = await chat(http, emu)
    assert status == 500
    assert raw == error_500("There are too many users now. Please try again a bit later.")
    assert (await cdp_state(http, emu))["channels_created"] == 1


async def test_coze_daily_limit_drops_the_user_token(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(gateway=False)
    await http.put(emu.admin_url + "/faults", json={"coze": {"daily_limit": True}})
    assert (await chat(http, emu))[0] == 500
    assert lines(emu, "[WARN]")[-1].endswith(" | USER_AUTHORIZATION:sim-user-token DAILY LIMIT ")
    assert (await chat(http, emu))[2] == error_500("no_available_user_auth")


async def test_coze_silence_runs_into_the_reply_timeout(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(gateway=False, time_scale=300.0)  # REQUEST_OUT_TIME 300 s: 1 s
    await http.put(emu.admin_url + "/faults", json={"coze": {"silence": True}})
    status, rid, raw = await chat(http, emu)
    assert (status, rid is not None) == (200, True)
    assert json.loads(raw) == {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": None,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "system_fingerprint": None,
        "suggestions": None,
    }
    async with http.post(
        emu.base_url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        assert resp.status == 200 and await resp.read() == b"data: [DONE]\n\n"


async def test_a_bad_out_time_header_is_400_after_the_prompt(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    status, _, raw = await chat(http, emu, headers={"out-time": "soon"})
    assert (status, raw) == (400, '{"message":"超时时间设置异常","success":false}'.encode())
    assert (await cdp_state(http, emu))["prompts_sent"] == 1


async def test_proxy_secret_401_bodies(make_emu: MakeEmu, http: aiohttp.ClientSession) -> None:
    emu = await make_emu(proxy_secret="s3cret")
    status, rid, raw = await chat(http, emu, headers={"Authorization": "Bearer nope"})
    assert status == 401 and rid
    assert (
        raw
        == (
            '{"error":{"message":"authorization(proxy-secret)校验失败","type":'
            '"invalid_request_error","param":"","code":"invalid_authorization"}}'
        ).encode()
    )
    assert (await chat(http, emu, headers={"Authorization": "Bearer s3cret"}))[0] == 200
    async with http.get(emu.base_url + "/api/channel/del/all/cdp") as resp:
        assert resp.status == 401
        assert await resp.read() == (
            '{"message":"无权进行此操作,未提供正确的 proxy-secret","success":false}'.encode()
        )


async def test_unknown_paths_are_gins_plain_404(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(only_openai_api=True)
    for method, path in (
        ("GET", "/nope"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/api/channel/del/all/cdp"),
    ):
        async with http.request(method, emu.base_url + path) as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"] == "text/plain"
            assert resp.headers["X-Request-Id"]
            assert await resp.read() == b"404 page not found"


async def test_models_are_id_and_object_only(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    async with http.get(emu.base_url + "/v1/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    assert body["data"][0] == {"id": "gpt-3.5-turbo", "object": "model"}
    assert all(set(m) == {"id", "object"} for m in body["data"])


async def test_request_rate_limit_is_per_client_ip(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(env={"REQUEST_RATE_LIMIT": "3"})
    url = emu.base_url + "/v1/models"
    for _ in range(3):
        async with http.get(url, headers={"X-Forwarded-For": "10.0.0.1, 127.0.0.1"}) as resp:
            assert resp.status == 200
    async with http.get(url, headers={"X-Forwarded-For": "10.0.0.1"}) as resp:
        assert resp.status == 429
        assert await resp.read() == '{"message":"请求过于频繁,请稍后再试","success":false}'.encode()
    async with http.get(url, headers={"X-Forwarded-For": "10.0.0.2"}) as resp:
        assert resp.status == 200
    assert lines(emu, "[GIN]")[-2].split(" | ")[4].strip() == "10.0.0.1"


def test_request_id_is_local_time_unpadded_nanoseconds_and_8_mixed_case() -> None:
    clock = FakeClock(start=1_700_000_000.000_012)
    emu = CdpEmulator(CdpSettings(discord_api_base="http://x", guild_id=1, seed=3), clock=clock)
    ids = [emu.new_request_id() for _ in range(200)]
    stamp = datetime.fromtimestamp(clock.time()).strftime("%Y%m%d%H%M%S")
    nanos = str(round(clock.time() * 1e9) % 1_000_000_000)
    assert len(nanos) < 9  # not zero-padded: ids are 23 to 31 characters
    for rid in ids:
        assert rid.startswith(stamp + nanos)
        assert re.fullmatch(r"[0-9a-zA-Z]{8}", rid[len(stamp + nanos) :])
        assert len(rid) == 14 + len(nanos) + 8
    assert any(re.search("[A-Z]", rid[-8:]) for rid in ids)
    assert any(re.search("[a-z]", rid[-8:]) for rid in ids)


async def test_non_string_channel_id_creates_nothing(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    for value in (True, {"a": 1}, [1]):
        status, _, raw = await chat(http, emu, {**CHAT, "channelId": value})
        assert (status, raw) == (500, error_500("Invalid request parameters"))
    assert (await cdp_state(http, emu))["create_attempts"] == 0
