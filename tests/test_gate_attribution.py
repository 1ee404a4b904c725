"""Attribution (DESIGN section 7): only evidence of Discord is a health sample; CDP's own
errors are counted by kind. The upstream here is a tiny stand-in answering CDP's exact
bodies (coze-discord-proxy controller/chat.go, controller/channel.go), so each case is
CDP's real answer, not an emulator's idea of it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.daemon import Daemon
from monitor.gate.attribute import attribute
from monitor.sim.discord import DiscordSimulator
from monitor.vocab import CDP_ERROR_KINDS
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import metric_value
from tests.helpers.upstream import serve_all
from tests.helpers.wait import wait_for

CHAT = "/v1/chat/completions"
CREATE_BODY = {"model": "coze", "messages": [{"role": "user", "content": "hi"}]}


def cdp_error(message: str) -> bytes:
    """CDP's 500 body (model.OpenAIErrorResponse), byte for byte as gin writes it."""
    error = {"message": message, "type": "request_error", "param": "", "code": "500"}
    return json.dumps({"error": error}, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("status", "body", "sample", "kind"),
    [
        (500, cdp_error("config error,check logs"), False, None),
        (500, cdp_error("no_available_user_auth"), None, "no_available_user_auth"),
        (500, cdp_error("model_not_found"), None, "model_not_found"),
        (500, cdp_error("no_available_bot"), None, "no_available_bot"),
        (500, cdp_error("Invalid request parameters"), None, "invalid_request"),
        (500, cdp_error("error sending message"), None, "error_sending_message"),
        (500, cdp_error("prompt已超过限制,请分段发送 [9000]"), None, "prompt_too_long"),
        (
            500,
            cdp_error("You have exceeded the daily limit for sending messages"),
            None,
            "coze_error",
        ),
        (500, cdp_error("config error"), None, "config_error"),  # images: ambiguous
        (500, b"<html>proxy error</html>", None, "other"),
        (429, b'{"message":"\xe8\xaf\xb7\xe6\xb1\x82","success":false}', None, "rate_limited"),
        (400, '{"message":"超时时间设置异常","success":false}'.encode(), None, "invalid_request"),
        (200, b'{"id":"x","choices":[]}', True, None),
    ],
)
def test_cdp_answers_are_attributed(
    status: int, body: bytes, sample: bool | None, kind: str | None
) -> None:
    verdict = attribute(CHAT, status, body)
    assert (verdict.sample, verdict.kind) == (sample, kind)
    assert kind is None or kind in CDP_ERROR_KINDS


@pytest.mark.parametrize(
    ("body", "sample", "kind"),
    [
        ({"success": True, "data": {"id": "1", "name": "n"}}, True, None),
        # controller/channel.go:45-50: the only failure after decoding is discordgo's
        # GuildChannelCreate error: Discord evidence, like chat's `config error,check logs`.
        ({"success": False, "message": "discord创建频道异常"}, False, None),
        ({"success": False, "message": "无效的参数"}, None, "invalid_request"),
    ],
)
def test_channel_api_answers_200_either_way(
    body: dict[str, Any], sample: bool | None, kind: str | None
) -> None:
    verdict = attribute("/api/channel/create", 200, json.dumps(body, ensure_ascii=False).encode())
    assert (verdict.sample, verdict.kind) == (sample, kind)


@dataclass
class FakeCdp:
    """Answers every request with `status` and `body`; remembers request sizes."""

    status: int = 200
    body: bytes = b'{"choices":[]}'
    sizes: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.sizes.append(len(data))
        self.paths.append(request.path)
        return web.Response(status=self.status, body=self.body, content_type="application/json")


@pytest.fixture
async def fake_cdp() -> AsyncIterator[tuple[FakeCdp, str]]:
    fake = FakeCdp()
    async with serve_all(fake.handle, client_max_size=1024**3) as url:
        yield fake, url


@contextlib.asynccontextmanager
async def gated(
    discord_sim: DiscordSimulator, upstream: str, tmp_path: Path, **gate: Any
) -> AsyncIterator[Daemon]:
    gate = {"enabled": True, "listen": "127.0.0.1:0", "upstream": upstream, **gate}
    # A 2-minute window (the "30 in 2 minutes"), judged every 50 ms.
    health = {"window": "2m", "evaluate_interval": "50ms"}
    config = fast_config(discord_sim, tmp_path / "state", gate=gate, health=health)
    async with running_daemon(config) as d:
        await wait_for(d.ready, what="ready")
        await wait_for(lambda: d.health.discord_reached, what="Discord reached")
        yield d


@pytest.fixture
async def daemon(
    discord_sim: DiscordSimulator, fake_cdp: tuple[FakeCdp, str], tmp_path: Path
) -> AsyncIterator[Daemon]:
    async with gated(discord_sim, fake_cdp[1], tmp_path) as d:
        yield d


async def post_creates(daemon: Daemon, n: int, path: str = CHAT, body: Any = None) -> list[int]:
    assert daemon.gate_url is not None
    payload = CREATE_BODY if body is None else body
    async with aiohttp.ClientSession() as http:

        async def one() -> int:
            async with http.post(daemon.gate_url + path, json=payload) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize(
    ("message", "kind"),
    [("no_available_user_auth", "no_available_user_auth"), ("该bot今日额度已用完", "coze_error")],
)
async def test_cdps_own_500s_leave_the_breaker_closed(
    daemon: Daemon, fake_cdp: tuple[FakeCdp, str], message: str, kind: str
) -> None:
    fake, _ = fake_cdp
    fake.status, fake.body = 500, cdp_error(message)
    assert await post_creates(daemon, 30) == [500] * 30
    daemon.evaluate_once()
    assert daemon.breaker.state == "closed"
    assert metric_value(daemon.metrics.cdp_errors, kind=kind) == 30
    assert metric_value(daemon.metrics.gate_responses, kind="create", code="500") == 30
    assert daemon.health.window.latest("gate") is None  # no Discord sample at all
    status = daemon.status()["gate"]
    assert status["cdp_errors"] == {kind: 30} and status["attribution"] == {"cdp_error": 30}


async def test_config_error_answers_open_the_breaker(
    daemon: Daemon, fake_cdp: tuple[FakeCdp, str]
) -> None:
    fake, _ = fake_cdp
    fake.status, fake.body = 500, cdp_error("config error,check logs")
    statuses = await post_creates(daemon, 30)
    await wait_for(lambda: daemon.breaker.state == "open", what="breaker open")
    assert statuses.count(500) >= 6  # the gate's own samples tripped it
    assert metric_value(daemon.metrics.cdp_errors, kind="other") == 0
    refused = await post_creates(daemon, 1)
    assert refused == [503]


async def test_channel_api_failure_is_a_discord_sample_and_threads_are_apart(
    daemon: Daemon, fake_cdp: tuple[FakeCdp, str]
) -> None:
    fake, _ = fake_cdp
    fake.body = json.dumps({"success": False, "message": "discord创建频道异常"}).encode()
    await post_creates(daemon, 1, "/api/channel/create", {"name": "x"})
    latest = daemon.health.window.latest("gate")
    assert latest is not None and latest.ok is False
    fake.body = json.dumps({"success": True, "data": {"id": "1"}}).encode()
    await post_creates(daemon, 2, "/api/thread/create", {"channelId": "1", "name": "t"})
    assert metric_value(daemon.metrics.gate_requests, kind="thread", decision="forwarded") == 2
    assert metric_value(daemon.metrics.gate_responses, kind="thread", code="200") == 2


async def test_a_5mib_base64_image_passes(daemon: Daemon, fake_cdp: tuple[FakeCdp, str]) -> None:
    fake, _ = fake_cdp
    image = base64.b64encode(b"\x89PNG" + bytes(5 * 1024 * 1024)).decode()
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
    body = {"model": "coze", "messages": [{"role": "user", "content": content}]}
    assert await post_creates(daemon, 1, CHAT, body) == [200]
    assert fake.sizes[-1] > 5 * 1024 * 1024


async def test_max_body_caps_creates_only_other_bodies_stream(
    discord_sim: DiscordSimulator, fake_cdp: tuple[FakeCdp, str], tmp_path: Path
) -> None:
    fake, upstream = fake_cdp
    async with gated(discord_sim, upstream, tmp_path, max_body="1KiB") as daemon:
        assert daemon.gate_url is not None
        big = bytes(64 * 1024)
        async with aiohttp.ClientSession() as http:
            async with http.post(daemon.gate_url + "/api/other", data=big) as resp:
                assert resp.status == 200  # not a create route: streamed, uncapped
            assert fake.sizes[-1] == len(big)
            async with http.post(daemon.gate_url + CHAT, data=big) as resp:
                assert resp.status == 413
        assert len(fake.sizes) == 1


async def test_refusals_never_use_words_or_statuses_that_disable_a_channel(
    daemon: Daemon,
) -> None:
    from monitor.vocab import GATEWAY_TRIGGER_WORDS

    await daemon.pause(600, "quota and balance check")
    assert daemon.gate_url is not None
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.gate_url + CHAT, json=CREATE_BODY) as resp:
            body = await resp.text()
            assert resp.status == 503 and resp.status not in (401, 403, 504, 524)
    error = json.loads(body)["error"]
    assert error["code"] == "paused"
    assert not any(word in body.lower() for word in GATEWAY_TRIGGER_WORDS), body
