"""The red-team findings against the gate, reproduced over raw sockets: none does harm.

Bypasses (dot segments, key case), protocol abuse (malformed lines, slow headers, hang
ups, non-ASCII headers), and the low items (JSON error bodies, gzip, upstream timeout).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator
from monitor.wiring import upstream_timeout
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.raw_http import host_port, parse_response, raw_request, request_bytes, send_raw
from tests.helpers.wait import wait_for

CHAT = b'{"model": "coze", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
async def cdp(discord_sim: DiscordSimulator) -> AsyncIterator[CdpEmulator]:
    emulator = CdpEmulator(
        CdpSettings(
            discord_api_base=discord_sim.api_base,
            guild_id=discord_sim.settings.guild_id,
            token=discord_sim.settings.token,
            reply_delay=0.01,
        )
    )
    await emulator.start("127.0.0.1", 0)
    try:
        yield emulator
    finally:
        await emulator.stop()


def gate_extra(upstream: str, **gate: Any) -> dict[str, Any]:
    return {"gate": {"enabled": True, "listen": "127.0.0.1:0", "upstream": upstream, **gate}}


@pytest.fixture
async def daemon(
    discord_sim: DiscordSimulator, cdp: CdpEmulator, tmp_path: Path
) -> AsyncIterator[Daemon]:
    extra = gate_extra(cdp.base_url, max_body="4KiB", header_timeout="300ms", body_timeout="300ms")
    config = fast_config(discord_sim, tmp_path / "state", **extra)
    async with running_daemon(config) as d:
        await wait_for(d.ready, what="ready")
        yield d


def gate_url(daemon: Daemon) -> str:
    assert daemon.gate_url is not None
    return daemon.gate_url


async def cdp_requests(cdp: CdpEmulator) -> int:
    total: int = cdp.snapshot()["total_requests"]
    return total


@pytest.mark.parametrize(
    "target",
    [
        "/v1/x/../chat/completions",
        "/v1/x/%2e%2e/chat/completions",
        "/v1/x/%2E%2E/chat/completions",
        "/v1/./chat/completions",
        "/v1//chat/completions",
        "/v1%2fchat/completions",
        "/v1/chat%2Fcompletions",
        "/v1\\chat\\completions",
        "/v1/chat/completions/..",
        "/v1/chat/completions%zz",
        "http://127.0.0.1/v1/chat/completions",
    ],
)
async def test_ambiguous_paths_are_refused_not_forwarded(
    daemon: Daemon, cdp: CdpEmulator, target: str
) -> None:
    await daemon.pause(600, "red team")
    before = await cdp_requests(cdp)
    resp = await raw_request(gate_url(daemon), "POST", target, b"{}")
    assert resp.status == 400
    assert resp.json()["error"]["code"] == "invalid_path"
    assert await cdp_requests(cdp) == before  # CDP never saw it


async def test_percent_encoded_create_path_is_still_a_create(daemon: Daemon) -> None:
    # gin routes on the decoded path: this reaches the chat handler, so it is a create.
    await daemon.pause(600, "red team")
    resp = await raw_request(gate_url(daemon), "POST", "/v1/chat/complet%69ons", CHAT)
    assert resp.status == 503 and "paused" in resp.json()["error"]["message"]


async def test_key_case_duplicate_is_refused_while_paused(daemon: Daemon, cdp: CdpEmulator) -> None:
    await daemon.pause(600, "red team")
    body = b'{"channelId":"123","CHANNELID":""}'
    resp = await raw_request(gate_url(daemon), "POST", "/v1/chat/completions", body)
    assert resp.status == 503 and "paused" in resp.json()["error"]["message"]


async def test_malformed_request_lines_log_little_and_answer_json(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    url = gate_url(daemon)
    with caplog.at_level(logging.DEBUG):
        for i in range(1000):
            resp = await send_raw(url, f"GARBAGE\x01{i} / HTTP/1.1\r\n\r\n".encode())
            assert resp.status == 400
        assert resp.headers["content-type"].startswith("application/json")
        resp = await raw_request(url, "GET", "/v1/models")  # still serving
    assert resp.status == 200
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) < 50, len(records)
    assert not any(r.exc_info for r in records)


async def test_non_ascii_authorization_is_no_server_error(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": "Bearer caf\udcc3\udca9"}  # raw bytes c3 a9
    with caplog.at_level(logging.INFO):
        resp = await raw_request(gate_url(daemon), "GET", "/v1/models", headers=headers)
    assert resp.status < 500
    assert not any(r.exc_info for r in caplog.records)


async def test_hang_up_mid_body_leaves_no_traceback(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = host_port(gate_url(daemon))
    with caplog.at_level(logging.DEBUG):
        _reader, writer = await asyncio.open_connection(host, port)
        head = request_bytes("POST", "/v1/chat/completions", b"x" * 100)[:-100]
        writer.write(head + b'{"model": ')
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        resp = await raw_request(gate_url(daemon), "GET", "/v1/models")
        assert resp.status == 200
        gate = daemon.gate
        assert gate is not None
        await wait_for(lambda: not gate.status()["inflight"].get("create"), what="idle")
    assert not any(r.exc_info for r in caplog.records)


async def test_slow_headers_are_cut_off(daemon: Daemon) -> None:
    host, port = host_port(gate_url(daemon))
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 30) == b""  # the gate closed it
    writer.close()


async def test_slow_body_gets_408_json(daemon: Daemon) -> None:
    host, port = host_port(gate_url(daemon))
    reader, writer = await asyncio.open_connection(host, port)
    head = request_bytes("POST", "/v1/chat/completions", b"x" * 100)[:-100]
    writer.write(head + b'{"model": ')  # 90 bytes never follow
    await writer.drain()
    resp = parse_response(await asyncio.wait_for(reader.read(), 30))
    writer.close()
    assert resp.status == 408 and resp.json()["error"]["code"] == "body_timeout"


async def test_error_answers_are_json(daemon: Daemon) -> None:
    url = gate_url(daemon)
    big = await raw_request(url, "POST", "/v1/chat/completions", b"x" * 8192)
    assert big.status == 413 and big.json()["error"]["code"] == "body_too_large"


async def test_gzip_create_body_is_refused(daemon: Daemon, cdp: CdpEmulator) -> None:
    await daemon.pause(600, "red team")
    before = await cdp_requests(cdp)
    body = gzip.compress(b'{"channelId": "123"}')
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    resp = await raw_request(gate_url(daemon), "POST", "/v1/chat/completions", body, headers)
    assert resp.status == 415
    assert resp.json()["error"]["code"] == "unsupported_content_encoding"
    assert await cdp_requests(cdp) == before


async def test_upstream_timeout_is_502_and_no_discord_sample(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts and never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    # The gate waits CDP's creation window plus its reply timeout at least: shrink them.
    cdp = {"create_attempt_timeout": "100ms", "request_timeout": "200ms"}
    # No gateway session: with one, CDP's creation window passing without a channel
    # would itself be evidence (tests/test_gate_slots.py), which is not what this tests.
    discord = {"gateway_session": {"enabled": False}}
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        cdp=cdp,
        discord=discord,
        **gate_extra(upstream, upstream_timeout="500ms"),
    )
    async with server, running_daemon(config) as daemon:
        assert daemon.gate is not None and daemon.gate.upstream_timeout == 0.5
        await wait_for(daemon.ready, what="ready")
        resp = await raw_request(gate_url(daemon), "POST", "/v1/chat/completions", CHAT)
        assert resp.status == 502
        assert resp.json()["error"]["code"] == "upstream_timeout"
        assert daemon.health.window.latest("gate") is None  # not counted against Discord


def test_upstream_timeout_is_never_shorter_than_cdps_own_worst_case() -> None:
    config = parse_config("discord: {token: t0ken, guild_id: 1}\ngate: {upstream_timeout: 1m}")
    assert upstream_timeout(config) == 3 * 60 + 300  # CDP's creation window + reply timeout
    longer = parse_config(
        "discord: {token: t0ken, guild_id: 1}\ncdp: {request_timeout: 10m}",
        environ={},
    )
    assert upstream_timeout(longer) == 180 + 600
