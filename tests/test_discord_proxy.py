"""Discord through a proxy (`discord.proxy`, CDP's PROXY_URL, the proxy environment):
probes reach a Discord that only the proxy can reach, and the breaker stays closed;
with Discord unreachable from start, creates are forwarded (Discord unknown, not
unstable). The proxy is a small forwarding HTTP proxy written here, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.discord.transport import discord_route, discord_session
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import metric_value
from tests.helpers.upstream import serve_all
from tests.helpers.wait import wait_for

# A name no resolver knows: only the proxy maps it to the simulator.
HIDDEN_HOST = "discord.invalid"


class ForwardingProxy:
    """An HTTP proxy: CONNECT tunnels and absolute-form requests (aiohttp sends plain
    http:// and ws:// that way), forwarded to `HIDDEN_HOST` mapped to loopback."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode().split(" ")
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await self._open(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                _, _, after = target.partition("://")
                authority, _, path = after.partition("/")
                host, _, port = authority.partition(":")
                up_reader, up_writer = await self._open(host, int(port or 80))
                up_writer.write(f"{method} /{path} {version}\r\n".encode() + rest)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1" if host == HIDDEN_HOST else host, port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardingProxy]:
    p = ForwardingProxy()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def hidden(sim: DiscordSimulator) -> dict[str, Any]:
    """The simulator under a name only the proxy resolves."""
    return {
        "api_base": sim.api_base.replace("127.0.0.1", HIDDEN_HOST),
        "gateway_url": sim.gateway_url.replace("127.0.0.1", HIDDEN_HOST),
    }


def config_for(sim: DiscordSimulator, state: Path, upstream: str, **discord: Any) -> Any:
    data = {
        "discord": {
            "token": sim.settings.token,
            "guild_id": str(sim.settings.guild_id),
            "request_timeout": "2s",
            "max_retries": 0,
            **discord,
        },
        "gate": {"enabled": True, "listen": "127.0.0.1:0", "upstream": upstream},
    }
    return fast_config(sim, state, **data)


@contextlib.asynccontextmanager
async def ok_upstream() -> AsyncIterator[str]:
    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"choices": []})

    async with serve_all(ok) as url:
        yield url


async def test_probes_go_through_the_proxy_and_the_breaker_stays_closed(
    discord_sim: DiscordSimulator, proxy: ForwardingProxy, tmp_path: Path
) -> None:
    async with ok_upstream() as upstream:
        config = config_for(
            discord_sim, tmp_path / "state", upstream, proxy=proxy.url, **hidden(discord_sim)
        )
        async with running_daemon(config) as daemon:
            await wait_for(daemon.ready, what="every probe ran")
            await wait_for(lambda: daemon.health.discord_reached, what="Discord reached")
            for _ in range(5):
                daemon.evaluate_once()
            assert daemon.breaker.state == "closed"
            assert metric_value(daemon.metrics.discord_reachable) == 1
            gateway = daemon.probe_results["gateway"]
            rest = daemon.probe_results["rest"]
            assert gateway.ok and rest.ok, (gateway, rest)
    # Each connection's first request (later ones ride the same tunnel): REST and the
    # gateway's websocket both came through the proxy, to a host only it resolves.
    assert any(r.startswith(f"GET http://{HIDDEN_HOST}:") for r in proxy.requests)
    assert any(r.startswith(f"GET ws://{HIDDEN_HOST}:") for r in proxy.requests)


async def test_unreachable_discord_from_start_forwards_creates(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    async with ok_upstream() as upstream:
        # No proxy: the hidden name does not resolve, every probe fails.
        config = config_for(discord_sim, tmp_path / "state", upstream, **hidden(discord_sim))
        async with running_daemon(config) as daemon:
            await wait_for(lambda: "rest" in daemon.probe_results, what="a rest probe")
            for _ in range(20):
                daemon.evaluate_once()
            assert daemon.breaker.state == "closed"
            assert not daemon.health.discord_reached
            assert metric_value(daemon.metrics.discord_reachable) == 0
            verdict = daemon.health.verdict
            assert verdict is not None and verdict.reason.startswith("unknown: Discord not reached")
            reason = daemon.status()["discord_reachable"]["reason"]
            assert reason.startswith(("rest probe:", "gateway probe:")), reason
            assert await _create(daemon) == 200  # forwarded, not refused
            assert daemon.status()["gate"]["fail_open_reason"].startswith("Discord not reached")


async def _create(daemon: Daemon) -> int:
    import aiohttp

    assert daemon.gate_url is not None
    body = {"model": "coze", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.gate_url + "/v1/chat/completions", json=body) as resp:
            return resp.status


def _discord(text: str, environ: dict[str, str] | None = None) -> Any:
    base = "discord:\n  token: t0ken\n  guild_id: 1\n"
    return parse_config(base + text, environ=environ or {})


def test_route_from_cdps_proxy_url_and_the_environment() -> None:
    cdp = _discord("", {"PROXY_URL": "socks5://u:p@10.0.0.1:1080"}).discord
    assert discord_route(cdp, {}).describe() == "proxy socks5://10.0.0.1:1080 (discord.proxy)"
    plain = _discord("").discord
    assert discord_route(plain, {}).describe() == "direct (no proxy configured)"
    env = {"HTTPS_PROXY": "http://10.0.0.2:3128"}
    assert discord_route(plain, env).describe() == "proxy http://10.0.0.2:3128 (HTTPS_PROXY)"
    env["NO_PROXY"] = ".discord.com"
    assert discord_route(plain, env).describe() == "direct (NO_PROXY)"
    assert _discord("  proxy: null", {"PROXY_URL": "http://x:1"}).discord.proxy is None


async def test_a_socks_proxy_gets_the_socks_connector() -> None:
    from aiohttp_socks import ProxyConnector

    config = _discord("  proxy: socks5h://127.0.0.1:1080").discord
    async with discord_session(config) as session:
        assert isinstance(session.connector, ProxyConnector)
