"""Control API (DESIGN section 6) through aiohttp's test client, on a real Daemon."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from monitor.control import _is_loopback, build_control_app
from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config

AUTH = {"Authorization": "Bearer control-secret"}
ClientFactory = Callable[[Any], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def daemon(discord_sim: DiscordSimulator, tmp_path: Path) -> AsyncIterator[Daemon]:
    config = fast_config(discord_sim, tmp_path / "state")
    yield Daemon(
        config,
        registry=CollectorRegistry(),
        logger=logging.getLogger("cdp-monitor.test"),
        process_metrics=False,
    )


@pytest.fixture
async def client(daemon: Daemon, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    app = build_control_app(daemon, registry=daemon.registry, token="control-secret")
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/status"), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/reconcile")],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "control-secret", "Basic control-secret"])
async def test_token_required(
    client: TestClient[Any, Any], daemon: Daemon, method: str, path: str, auth: str | None
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    resp = await client.request(method, path, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == "missing or wrong bearer token"
    assert daemon.breaker.state == "closed"  # nothing happened


async def test_open_endpoints_need_no_token(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["ok"] is True
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json()) == {"ready": False}  # no probe round yet
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert "cdpmon_breaker_state" in await resp.text()


async def test_status_shape(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/status", headers=AUTH)
    status = await resp.json()
    assert resp.status == 200
    assert set(status) >= {"breaker", "paused", "health", "probes", "channels", "reconcile", "gate"}
    assert set(status["breaker"]) >= {"state", "since", "retry_at"}
    assert status["breaker"]["state"] == "closed" and status["paused"] is None


async def test_pause_and_resume(client: TestClient[Any, Any], daemon: Daemon) -> None:
    resp = await client.post("/pause", json={"for": "30m", "reason": "deploy"}, headers=AUTH)
    status = await resp.json()
    assert resp.status == 200
    assert status["breaker"]["state"] == "forced_open"
    assert status["paused"]["reason"] == "deploy"
    assert status["paused"]["until"] == pytest.approx(daemon.clock.time() + 1800, abs=5)
    resp = await client.post("/resume", headers=AUTH)
    status = await resp.json()
    assert resp.status == 200 and status["paused"] is None
    assert status["breaker"]["state"] == "closed"


async def test_pause_without_body_is_indefinite(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/pause", headers=AUTH)
    status = await resp.json()
    assert resp.status == 200 and status["paused"]["until"] is None


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/pause", b"{not json", "body is not valid JSON"),
        ("/pause", b"[1, 2]", "body must be a JSON object"),
        ("/pause", b'{"for": "soon"}', "for: "),
        ("/pause", b'{"for": "0s"}', "for: must be positive"),
        ("/pause", b'{"for": 30}', "for: wrong type int"),
        ("/pause", b'{"reason": "x", "until": "tomorrow"}', "unknown field(s): until"),
        ("/resume", b'{"now": true}', "unknown field(s): now"),
        ("/reconcile", b'{"dry_run": "yes"}', "dry_run: wrong type str"),
        ("/reconcile", b'{"dryrun": true}', "unknown field(s): dryrun"),
    ],
)
async def test_bad_bodies_get_400_json(
    client: TestClient[Any, Any], daemon: Daemon, path: str, body: bytes, message: str
) -> None:
    resp = await client.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status == 400
    assert message in (await resp.json())["error"]
    assert daemon.breaker.state == "closed"


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.8.9.10")
    assert not _is_loopback("10.0.0.5") and not _is_loopback(None) and not _is_loopback("x")


async def test_a_pause_that_cannot_be_saved_is_an_error_not_a_200(
    daemon: Daemon, client: TestClient[Any, Any]
) -> None:
    # Red team: with the state dir unwritable, /pause answered 200 and a restart lost it.
    state_dir = daemon.config.state_dir
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    if state_dir.exists():
        for child in state_dir.iterdir():
            child.unlink()
        state_dir.rmdir()
    state_dir.write_text("not a directory")  # every write into it fails, even as root
    resp = await client.post("/pause", json={"reason": "maintenance"}, headers=AUTH)
    assert resp.status == 500
    assert "a restart would lose the pause" in (await resp.json())["error"]
    status = await (await client.get("/status", headers=AUTH)).json()
    assert status["breaker"]["state"] == "forced_open"
    assert status["paused"]["persisted"] is False
