"""The control API under the red team's browser-borne and malformed requests.

Without a token (the default) a web page must not pause, resume or reconcile, and a
DNS-rebinding page must not read /status; client mistakes get JSON, never a 500 or a
traceback. Raw sockets, against a real listener.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.control import build_control_app
from monitor.daemon import Daemon
from monitor.httpserve import start_site
from monitor.sim.discord import DiscordSimulator
from monitor.units import HostPort
from tests.helpers.daemon import fast_config
from tests.helpers.raw_http import RawResponse, raw_request

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def daemon(discord_sim: DiscordSimulator, tmp_path: Path) -> Daemon:
    return Daemon(
        fast_config(discord_sim, tmp_path / "state"),
        registry=CollectorRegistry(),
        logger=logging.getLogger("cdp-monitor.test"),
        process_metrics=False,
    )


async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def open_api(daemon: Daemon) -> AsyncIterator[str]:
    """The control API with no token, as shipped by default."""
    listen = HostPort("127.0.0.1", 9105)
    app = build_control_app(daemon, registry=daemon.registry, token=None, listen=listen)
    async for url in _serve(app):
        yield url


@pytest.fixture
async def token_api(daemon: Daemon) -> AsyncIterator[str]:
    app = build_control_app(daemon, registry=daemon.registry, token="control-secret")
    async for url in _serve(app):
        yield url


async def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> RawResponse:
    return await raw_request(url, "POST", path, body, headers)


@pytest.mark.parametrize("path", ["/pause", "/resume", "/reconcile"])
async def test_text_plain_form_post_from_a_foreign_origin_is_refused(
    open_api: str, daemon: Daemon, path: str
) -> None:
    headers = {
        "Content-Type": "text/plain",
        "Origin": "http://evil.example",
        "Sec-Fetch-Site": "cross-site",
    }
    resp = await post(open_api, path, b'{"reason": "pwned"}', headers)
    assert resp.status == 403 and "error" in resp.json()
    assert daemon.breaker.state == "closed" and daemon.health.breaker.paused is None


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Content-Type": "text/plain"}, "Content-Type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type"),
        ({**JSON, "Origin": "http://evil.example"}, "foreign Origin"),
        ({**JSON, "Origin": "null"}, "foreign Origin"),
        ({**JSON, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ({**JSON, "Sec-Fetch-Site": "same-site"}, "cross-site"),
    ],
)
async def test_each_browser_marker_alone_refuses_a_pause(
    open_api: str, daemon: Daemon, headers: dict[str, str], why: str
) -> None:
    resp = await post(open_api, "/pause", b"{}", headers)
    assert resp.status == 403 and why in resp.json()["error"]
    assert daemon.health.breaker.paused is None


@pytest.mark.parametrize("path", ["/status", "/healthz", "/metrics", "/pause"])
async def test_rebinding_host_is_refused(open_api: str, daemon: Daemon, path: str) -> None:
    method = "POST" if path == "/pause" else "GET"
    headers = {**JSON, "Host": "attacker.example:9105"}
    resp = await raw_request(open_api, method, path, b"{}", headers)
    assert resp.status == 403 and "Host" in resp.json()["error"]
    assert daemon.health.breaker.paused is None


@pytest.mark.parametrize(
    "headers",
    [
        JSON,
        {**JSON, "Host": "localhost:9105"},
        {**JSON, "Host": "[::1]:9105", "Origin": "http://127.0.0.1:9105"},
        {**JSON, "Sec-Fetch-Site": "same-origin"},
    ],
)
async def test_local_json_calls_still_work(
    open_api: str, daemon: Daemon, headers: dict[str, str]
) -> None:
    resp = await post(open_api, "/pause", b'{"for": "1h"}', headers)
    assert resp.status == 200, resp.body
    assert daemon.health.breaker.paused is not None


async def test_non_ascii_authorization_is_401_not_500(
    token_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": "Bearer caf\udcc3\udca9"}  # raw bytes c3 a9 on the wire
    with caplog.at_level(logging.INFO):
        resp = await raw_request(token_api, "GET", "/status", headers=headers)
    assert resp.status == 401 and "error" in resp.json()
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("GET", "/pause", 405)]
)
async def test_http_errors_are_json(token_api: str, method: str, path: str, status: int) -> None:
    resp = await raw_request(token_api, method, path)
    assert resp.status == status and "error" in resp.json()


async def test_oversized_body_is_json_413(open_api: str) -> None:
    resp = await post(open_api, "/pause", b" " * 70_000, JSON)
    assert resp.status == 413 and "error" in resp.json()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"for": "31d"}', "for: at most 30d"),
        (b'{"for": "99999999999999d"}', "for:"),
        (b'{"reason": "ok\\n2026-12-01 INFO breaker closed"}', "reason: one line"),
        (b'{"reason": "' + b"x" * 600 + b'"}', "reason: one line"),
    ],
)
async def test_huge_pause_and_forged_reason_are_400(
    open_api: str, daemon: Daemon, body: bytes, message: str
) -> None:
    resp = await post(open_api, "/pause", body, JSON)
    assert resp.status == 400 and message in resp.json()["error"]
    assert daemon.health.breaker.paused is None


async def test_healthz_reports_descriptor_pressure(open_api: str) -> None:
    resp = await raw_request(open_api, "GET", "/healthz")
    fds: dict[str, Any] = resp.json()["descriptors"]
    assert fds["open"] > 0 and fds["limit"] >= fds["open"]
    assert 0 < fds["ratio"] <= 1
