"""The status page at GET / of the control port: rendered from /status, nothing secret,
no external assets; driven in a real headless chromium (Debian's chromium and
chromium-driver, `make tools`) against a running daemon: it shows the numbers /status
has, and a pause typed into the page changes the breaker."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from monitor.control import build_control_app
from monitor.sim.discord import DiscordSimulator
from monitor.statuspage import History, render_page
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.wait import wait_for

T = TypeVar("T")
TOKEN = "control-secret"

STATUS: dict[str, Any] = {
    "breaker": {"state": "forced_open", "since": 1_700_000_000.0, "retry_at": None},
    "paused": {"reason": "<script>alert(1)</script>", "until": 1_700_003_600.0},
    "health": {
        "failure_ratio": 0.25,
        "slow_ratio": 0.0,
        "by_source": {"rest": {"total": 8, "failures": 2, "slow": 0}},
    },
    "channels": {
        "channels": 420,
        "limit": 500,
        "usage": 0.84,
        "above_watermark": True,
        "temp": {"leaked": 3},
        "live": {"creates_24h": 950, "create_limit_daily": 1000, "seconds_to_create_cap": 5400},
    },
    "gateway_session": {"state": "up"},
    "gate": {
        "upstream": "http://user:pw@10.0.0.1:7078",
        "decisions": {"hold": 4},
        "limit": {
            "enabled": True,
            "active": True,
            "pending": 2,
            "limit": 3,
            "per_create": 14.5,
            "predicted_wait": 43.5,
            "budget": 45.0,
        },
    },
    "discord": {"token_invalid": False, "banned_for": 0.0},
    "events": [{"kind": "paused", "at": 1_700_000_000.0, "reason": "maint"}],
}


def test_page_renders_the_status_numbers_escaped_and_nothing_secret() -> None:
    history = History()
    for i in range(5):
        history.record(
            {"channels": {"channels": 400 + i, "live": STATUS["channels"]["live"]}},
            1_700_000_000.0 + 60 * i,
        )
    page = render_page(STATUS, history, 1_700_000_300.0)
    assert '<td id="channels">420</td>' in page and '<td id="channel-limit">500</td>' in page
    assert '<td id="creates">950 / 1000</td>' in page and "1h30m" in page
    assert "forced_open" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert "user:pw" not in page and "10.0.0.1" not in page  # the upstream is not shown
    assert page.count("<polyline") == 2
    assert '<td id="discord-reachable">-</td>' in page  # no probe results yet
    assert "2 pending of 3; 14.5s a channel, next waits 43.5s (budget 45.0s)" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # no external assets


class StubTarget:
    """A ControlTarget that only answers status()."""

    def status(self) -> dict[str, Any]:
        return STATUS

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    def ready(self) -> bool:
        return True

    async def pause(self, duration: float | None, reason: str | None) -> None:
        raise AssertionError("not called")

    async def resume(self) -> None:
        raise AssertionError("not called")

    async def reconcile(self, dry_run: bool) -> dict[str, Any]:
        raise AssertionError("not called")


async def test_page_needs_no_token_and_sets_a_strict_policy(aiohttp_client: Any) -> None:
    app = build_control_app(StubTarget(), registry=CollectorRegistry(), token=TOKEN)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    text = await resp.text()
    assert '<td id="channels">420</td>' in text and TOKEN not in text
    assert (await client.get("/status")).status == 401  # the JSON still wants the token


def _chromium() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=420,1600",
    ):
        options.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


async def in_thread(fn: Callable[[], T]) -> T:
    """Selenium blocks: run it off the event loop the daemon serves on."""
    return await asyncio.to_thread(fn)


async def status_of(url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.get(url + "/status", headers=headers) as resp:
        return dict(await resp.json())


async def test_browser_shows_status_numbers_and_pauses_from_the_page(
    discord_sim: DiscordSimulator, tmp_path: Path, browser: WebDriver
) -> None:
    config = fast_config(discord_sim, tmp_path / "state", reconcile={"enabled": True})
    async with running_daemon(config) as daemon:
        url = daemon.control_url
        assert url is not None
        await wait_for(
            lambda: (
                daemon.reconciler is not None and daemon.reconciler.status()["channels"] is not None
            ),
            what="census",
        )
        await wait_for(daemon.ready, what="the first probe round")
        now = daemon.clock.time()
        daemon.notices.history.points.clear()
        for i in range(30):  # two hours of chart, as the watch loop would have recorded
            daemon.notices.history.record(
                {"channels": {"channels": 300 + 4 * i, "live": {"creates_24h": 10 * i}}},
                now - 7200 + 240 * i,
            )
        status = await status_of(url)
        await in_thread(lambda: browser.get(url + "/"))
        text = lambda ident: browser.find_element(By.ID, ident).text  # noqa: E731
        assert await in_thread(lambda: text("breaker-state")) == status["breaker"]["state"]
        assert await in_thread(lambda: text("channels")) == str(status["channels"]["channels"])
        assert await in_thread(lambda: text("channel-limit")) == str(status["channels"]["limit"])
        assert await in_thread(lambda: text("discord-reachable")) == "yes"
        await in_thread(lambda: browser.save_screenshot(str(tmp_path / "status-page.png")))

        def pause() -> None:
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.ID, "for").send_keys("30m")
            browser.find_element(By.ID, "reason").send_keys("page test")
            browser.find_element(By.ID, "pause").click()
            # The page reloads after the pause: an element may belong to the old document.
            WebDriverWait(browser, 15, ignored_exceptions=[WebDriverException]).until(
                lambda d: d.find_element(By.ID, "breaker-state").text == "forced_open"
            )

        await in_thread(pause)
        after = await status_of(url)
        assert after["breaker"]["state"] == "forced_open"
        assert after["paused"]["reason"] == "page test"
        assert await in_thread(lambda: text("paused-reason")) == "page test"
        await in_thread(lambda: browser.save_screenshot(str(tmp_path / "status-page-paused.png")))
        print("screenshots:", tmp_path)


async def test_a_wrong_token_from_the_page_changes_nothing(
    discord_sim: DiscordSimulator, tmp_path: Path, browser: WebDriver
) -> None:
    async with running_daemon(fast_config(discord_sim, tmp_path / "state")) as daemon:
        url = daemon.control_url
        assert url is not None
        await in_thread(lambda: browser.get(url + "/"))

        def pause_with_wrong_token() -> str:
            browser.find_element(By.ID, "token").send_keys("wrong")
            browser.find_element(By.ID, "pause").click()
            WebDriverWait(browser, 15, ignored_exceptions=[WebDriverException]).until(
                lambda d: "HTTP 401" in d.find_element(By.ID, "result").text
            )
            return str(browser.find_element(By.ID, "result").text)

        assert "bearer token" in await in_thread(pause_with_wrong_token)
        assert (await status_of(url))["paused"] is None
