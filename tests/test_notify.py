"""Notifications: every event kind reaches a loopback stand-in of Telegram's Bot API
through Apprise's real tgram:// plugin; flaps are rate-limited per kind; a hung
service delays neither the breaker nor the event emitter."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from apprise.plugins.telegram import NotifyTelegram  # the `notify` extra; `test` has it too
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr

from monitor.clock import FakeClock
from monitor.config.schema import NotifyConfig
from monitor.errors import MonitorError
from monitor.events import EVENT_KINDS, Events
from monitor.health.effects import TransitionEffects
from monitor.httpserve import start_site
from monitor.metrics import Metrics
from monitor.notify import StatusWatch, build_notifier, notify_secrets, notify_settings
from monitor.notify.messages import LANGUAGES, TEMPLATES, render
from monitor.notify.notifier import Notifier, NotifySettings
from monitor.sim.discord import DiscordSimulator
from monitor.wiring import new_notices
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import sample_or_zero
from tests.helpers.wait import wait_for

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
CHAT_ID = "987654321"
LOG = logging.getLogger("test-notify")

# One sample of each kind's fields, as its emitter sends them.
FIELDS: dict[str, dict[str, Any]] = {
    "breaker_open": {"reason": "failure ratio 0.6"},
    "breaker_half_open": {"reason": "retry"},
    "breaker_closed": {"reason": "healthy"},
    "paused": {"reason": "maintenance", "until": 1_700_003_600.0},
    "resumed": {"reason": "by hand", "state": "closed"},
    "guild_watermark": {"channels": 420, "limit": 500},
    "daily_creations_near_cap": {"creates": 950, "cap": 1000, "seconds_to_cap": 5400},
    "token_invalid": {},
    "cloudflare_ban": {"seconds": 3600},
    "cdp_trouble": {"detail": "all user tokens exhausted"},
    "discord_unreachable": {"detail": "connect timeout"},
    "reconcile_deleted": {"deleted": 12, "run_id": "r1"},
}


class TelegramStandIn:
    """Telegram's Bot API on loopback: records each sendMessage and answers as Telegram."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        assert request.method == "POST"
        self.messages.append(json.loads(await request.read()))
        return web.json_response({"ok": True, "result": {"message_id": len(self.messages)}})


@pytest.fixture
async def telegram(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TelegramStandIn]:
    stand_in = TelegramStandIn()
    app = web.Application()
    app.router.add_post("/{tail:.*}", stand_in.handle)
    server = await aiohttp_server(app)
    # Apprise's Telegram plugin builds f"{notify_url}{bot_token}/sendMessage" from the class
    # attribute notify_url = "https://api.telegram.org/bot" (apprise/plugins/telegram.py):
    # point that one attribute at loopback; everything else is the real plugin.
    monkeypatch.setattr(NotifyTelegram, "notify_url", f"http://127.0.0.1:{server.port}/bot")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield stand_in


def cdp_env() -> dict[str, str]:
    return {"NOTIFY_TELEGRAM_BOT_TOKEN": BOT_TOKEN, "NOTIFY_TELEGRAM_USER_ID": CHAT_ID}


def test_templates_cover_every_kind_in_every_language() -> None:
    assert set(TEMPLATES) == set(EVENT_KINDS) == set(FIELDS)
    assert all(set(TEMPLATES[k]) == set(LANGUAGES) for k in EVENT_KINDS)


async def test_every_event_kind_reaches_telegram_from_cdps_variables(
    telegram: TelegramStandIn,
) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    notifier = build_notifier(NotifyConfig(), environ=cdp_env(), metrics=metrics, logger=LOG)
    assert notifier is not None and notifier.settings.language == "zh"  # CDP's vars alone
    events = Events(clock=clock)
    events.subscribe(notifier)
    notifier.start()
    try:
        for kind in EVENT_KINDS:
            events.emit(kind, **FIELDS[kind])
        await wait_for(lambda: notifier.sent == len(EVENT_KINDS), what="every kind sent")
    finally:
        await notifier.close()
    assert set(telegram.paths) == {f"/bot{BOT_TOKEN}/sendMessage"}
    assert [m["chat_id"] for m in telegram.messages] == [int(CHAT_ID)] * len(EVENT_KINDS)
    for kind, message in zip(EVENT_KINDS, telegram.messages, strict=True):
        title = TEMPLATES[kind]["zh"][0]
        assert title in message["text"], (kind, message["text"])
    assert "12" in telegram.messages[EVENT_KINDS.index("reconcile_deleted")]["text"]
    assert sample_or_zero(metrics.registry, "cdpmon_action_attempts_total", kind="notify") == len(
        EVENT_KINDS
    )
    assert sample_or_zero(metrics.registry, "cdpmon_action_failures_total", kind="notify") == 0


async def test_configured_url_speaks_english_and_a_refusal_is_counted(
    telegram: TelegramStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(CollectorRegistry())
    config = NotifyConfig.model_validate({"urls": [f"tgram://{BOT_TOKEN}/{CHAT_ID}"]})
    notifier = build_notifier(config, environ={}, metrics=metrics, logger=LOG)
    assert notifier is not None and notifier.settings.language == "en"
    events = Events(clock=FakeClock())
    events.subscribe(notifier)
    notifier.start()
    try:
        events.emit("token_invalid")
        await wait_for(lambda: notifier.sent == 1, what="sent")
        assert "Discord token invalid" in telegram.messages[0]["text"]
        # Telegram refuses (wrong bot token): a failed attempt, counted, daemon unharmed.
        monkeypatch.setattr(NotifyTelegram, "notify_url", "http://127.0.0.1:9/bot")
        events.emit("breaker_open", reason="x")
        await wait_for(
            lambda: (
                sample_or_zero(metrics.registry, "cdpmon_action_failures_total", kind="notify") == 1
            ),
            what="failure counted",
        )
    finally:
        await notifier.close()


def test_secrets_and_settings() -> None:
    config = NotifyConfig.model_validate({"urls": ["bark://host/KEY"], "language": "zh"})
    secrets = notify_secrets(config, cdp_env())
    assert "bark://host/KEY" in secrets and BOT_TOKEN in secrets
    assert f"tgram://{BOT_TOKEN}/{CHAT_ID}" in secrets
    assert notify_settings(config, {}).language == "zh"
    assert notify_secrets(NotifyConfig(cdp_env=False), cdp_env()) == []
    with pytest.raises(ValueError, match="unknown event"):
        NotifyConfig.model_validate({"events": ["breaker_opened"]})


def test_render_fills_fields_and_survives_missing_ones() -> None:
    events = Events(clock=FakeClock())
    title, body = render(
        events.emit("daily_creations_near_cap", **FIELDS["daily_creations_near_cap"]), "en", "prod"
    )
    assert title == "[prod] cdp-monitor: Daily channel creations near the cap"
    assert "950/1000" in body and "1h30m" in body
    _, body = render(events.emit("guild_watermark"), "zh")
    assert "?/?" in body


class Recorder:
    """A sender that records; optionally hangs until released."""

    def __init__(self, hang: bool = False) -> None:
        self.sent: list[str] = []
        self.calls = 0
        self.release = threading.Event()
        self.hang = hang

    def __call__(self, title: str, body: str) -> bool:
        self.calls += 1
        if self.hang:
            self.release.wait(30)
        self.sent.append(title)
        return True


def settings(**kw: Any) -> NotifySettings:
    base: dict[str, Any] = {
        "language": "en",
        "period": 600.0,
        "timeout": 5.0,
        "kinds": frozenset(EVENT_KINDS),
    }
    return NotifySettings(**{**base, **kw})


async def test_a_hundred_flaps_in_a_minute_make_one_message_per_kind_per_period() -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    sender = Recorder()
    notifier = Notifier(settings(), sender=sender, metrics=metrics, logger=LOG)
    events = Events(clock=clock)
    events.subscribe(notifier)
    notifier.start()
    try:
        for _ in range(100):
            events.emit("breaker_open", reason="flap")
            events.emit("breaker_closed", reason="flap")
            clock.advance(0.6)  # 100 flaps over 60 s
        await wait_for(lambda: len(sender.sent) == 2, what="first open and close sent")
        suppressed = sample_or_zero(
            metrics.registry, "cdpmon_notifications_suppressed_total", reason="rate_limited"
        )
        assert suppressed == 198
        clock.advance(600)  # a new period: the next flap speaks again
        events.emit("breaker_open", reason="again")
        await wait_for(lambda: len(sender.sent) == 3, what="next period's message")
    finally:
        await notifier.close()
    assert sender.sent == [
        "cdp-monitor: Breaker open",
        "cdp-monitor: Breaker closed",
        "cdp-monitor: Breaker open",
    ]


async def test_a_hung_service_costs_one_thread_and_every_message_fails_fast() -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    sender = Recorder(hang=True)
    notifier = Notifier(settings(timeout=0.05), sender=sender, metrics=metrics, logger=LOG)
    events = Events(clock=clock)
    events.subscribe(notifier)
    notifier.start()
    try:
        for kind in EVENT_KINDS:  # each returns at once: emit only queues
            events.emit(kind)
        await wait_for(
            lambda: (
                sample_or_zero(metrics.registry, "cdpmon_action_failures_total", kind="notify")
                == len(EVENT_KINDS)
            ),
            what="the first send abandoned after its timeout, the others failed at once",
        )
        assert sender.calls == 1 and sender.sent == []  # one thread hangs, no pile of them
    finally:
        sender.release.set()
        await notifier.close()


def test_status_watch_emits_on_rising_edges_only() -> None:
    events = Events(clock=FakeClock())
    watch = StatusWatch(events, reconcile_threshold=5)
    quiet = {"channels": {"channels": 10, "limit": 500, "above_watermark": False}}
    full = {
        "channels": {"channels": 450, "limit": 500, "above_watermark": True},
        "discord": {"token_invalid": True, "banned_for": 30.0},
        "reconcile": {"last_run": {"run_id": "a", "deleted": 7, "dry_run": False}},
    }
    for status in (quiet, full, full, quiet, full):
        watch.observe(status)
    kinds = [e.kind for e in events.recent]
    assert kinds == [
        "guild_watermark",
        "token_invalid",
        "cloudflare_ban",
        "reconcile_deleted",
        "guild_watermark",
        "token_invalid",
        "cloudflare_ban",
    ]
    watch.observe({"reconcile": {"last_run": {"run_id": "b", "deleted": 4, "dry_run": False}}})
    assert events.recent[-1].kind == "cloudflare_ban"  # 4 < threshold 5


async def test_a_hung_service_never_delays_the_gate_or_the_breaker(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    async def completions(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", completions)
    runner, port = await start_site(upstream, "127.0.0.1", 0)
    sender = Recorder(hang=True)  # hangs until the end of the test
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        probes={"gateway": {"enabled": False}, "rest": {"enabled": False}},
        gate={"enabled": True, "listen": "127.0.0.1:0", "upstream": f"http://127.0.0.1:{port}"},
    )
    try:
        async with running_daemon(config) as daemon, aiohttp.ClientSession() as http:
            notifier = Notifier(
                settings(timeout=60.0, period=0.0),
                sender=sender,
                metrics=daemon.metrics,
                logger=LOG,
            )
            daemon.notices.events.subscribe(notifier)
            notifier.start()
            create = f"{daemon.gate_url}/v1/chat/completions"
            headers = {"Authorization": "Bearer control-secret"}
            try:
                for i in range(20):
                    async with http.post(
                        f"{daemon.control_url}/pause", json={"reason": f"flap {i}"}, headers=headers
                    ) as resp:
                        assert (await resp.json())["breaker"]["state"] == "forced_open"
                    async with http.post(create, json={"messages": []}) as resp:
                        assert resp.status == 503  # refused at once, as when nothing hangs
                    async with http.post(
                        f"{daemon.control_url}/resume", json={}, headers=headers
                    ) as resp:
                        assert (await resp.json())["breaker"]["state"] != "forced_open"
                    async with http.post(create, json={"messages": []}) as resp:
                        assert resp.status == 200
                assert sender.sent == []  # the first message is still hanging
                kinds = [e.kind for e in daemon.notices.events.recent]
                assert kinds.count("paused") == 20 and kinds.count("resumed") == 20
            finally:
                sender.release.set()
                await notifier.close()
    finally:
        await runner.cleanup()


def test_action_and_notification_series_start_at_zero_without_created() -> None:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    for kind in ("exec", "webhook", "notify"):
        assert f'cdpmon_action_attempts_total{{kind="{kind}"}} 0.0' in text
        assert f'cdpmon_action_failures_total{{kind="{kind}"}} 0.0' in text
    assert 'cdpmon_notifications_suppressed_total{reason="rate_limited"} 0.0' in text
    assert "_created" not in text


def test_reload_takes_period_language_and_threshold_and_says_urls_need_a_restart(
    discord_sim: DiscordSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = fast_config(discord_sim, tmp_path)
    metrics = Metrics(CollectorRegistry())
    effects = TransitionEffects(metrics=metrics, logger=LOG, environ={}, actions=config.actions)
    notices = new_notices(config, effects, metrics, FakeClock(), LOG, cdp_env())
    assert notices.notifier is not None and notices.notifier.settings.language == "zh"
    assert effects.events is notices.events
    new = config.model_copy(
        update={
            "actions": config.actions.model_copy(
                update={
                    "notify": NotifyConfig(
                        language="en",
                        period=60.0,
                        reconcile_threshold=3,
                        urls=(SecretStr("bark://host/KEY"),),
                    )
                }
            )
        }
    )
    with caplog.at_level(logging.WARNING):
        notices.reconfigure(new, cdp_env(), LOG)
    assert notices.notifier.settings.language == "en"
    assert notices.notifier.settings.period == 60.0
    assert notices.watch.reconcile_threshold == 3
    assert "actions.notify.urls changed" in caplog.text
    assert "KEY" not in caplog.text


def test_a_url_apprise_cannot_use_is_named_by_where_it_came_from_not_shown() -> None:
    config = NotifyConfig.model_validate({"urls": ["nosuchservice://SECRET"]})
    with pytest.raises(MonitorError) as info:
        build_notifier(config, environ={}, metrics=Metrics(CollectorRegistry()), logger=LOG)
    assert "actions.notify.urls[0]" in str(info.value) and "SECRET" not in str(info.value)
    assert (
        build_notifier(NotifyConfig(), environ={}, metrics=Metrics(CollectorRegistry()), logger=LOG)
        is None
    )


def test_status_watch_reads_unreachable_discord_and_cdp_off_the_probes() -> None:
    events = Events(clock=FakeClock())
    watch = StatusWatch(events, reconcile_threshold=5)
    ok = {"ok": True, "detail": None}
    one_down = {"gateway": {"ok": False, "detail": "timeout"}, "rest": ok, "cdp": ok}
    all_down = {
        "gateway": {"ok": False, "detail": "timeout in connect"},
        "rest": {"ok": False, "detail": "HTTP 502"},
        "cdp": {"ok": False, "detail": "connection refused"},
    }
    for probes in (one_down, all_down, all_down, one_down, all_down):
        watch.observe({"probes": probes})
    assert [(e.kind, e.fields["detail"]) for e in events.recent] == [
        ("discord_unreachable", "timeout in connect; HTTP 502"),
        ("cdp_trouble", "CDP does not answer: connection refused"),
        ("discord_unreachable", "timeout in connect; HTTP 502"),
        ("cdp_trouble", "CDP does not answer: connection refused"),
    ]


def test_status_watch_says_when_daily_creations_near_the_cap() -> None:
    events = Events(clock=FakeClock())
    watch = StatusWatch(events, reconcile_threshold=5, creations_ratio=0.8)

    def status(creates: int) -> dict[str, Any]:
        live = {"creates_24h": creates, "create_limit_daily": 1000, "seconds_to_create_cap": 600}
        return {"channels": {"channels": 1, "limit": 500, "live": live}}

    for creates in (100, 799, 800, 950, 700, 810):
        watch.observe(status(creates))
    near = [e.fields for e in events.recent if e.kind == "daily_creations_near_cap"]
    assert near == [
        {"creates": 800, "cap": 1000, "seconds_to_cap": 600},
        {"creates": 810, "cap": 1000, "seconds_to_cap": 600},
    ]
