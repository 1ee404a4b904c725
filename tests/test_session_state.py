"""The gateway session's pure parts: the IDENTIFY budget, spacing and backoff, close
codes, zlib-stream, the daily-creation window and the live guild fed with events."""

from __future__ import annotations

import math
import zlib

import pytest
from prometheus_client import CollectorRegistry

from monitor.discord import session_proto as proto
from monitor.discord.session_budget import (
    DAY,
    StartLimit,
    backoff_delay,
    identify_decision,
    identify_wait,
)
from monitor.discord.session_creations import CreationWindow
from monitor.discord.session_live import ChannelEvent, LiveGuild
from monitor.discord.snowflake import make_snowflake
from monitor.metrics import Metrics
from monitor.state import StateDir

NOW = 1_700_000_000.0
GUILD = 111122223333444455


def _limit(remaining: int, *, max_concurrency: int = 1) -> StartLimit:
    return StartLimit(
        remaining=remaining,
        total=1000,
        reset_after=3600.0,
        max_concurrency=max_concurrency,
        at=NOW,
    )


# -- budget -------------------------------------------------------------------------


def test_identify_allowed_with_starts_above_the_reserve() -> None:
    d = identify_decision(NOW, limit=_limit(100), reserve=100, identifies=[], max_per_day=20)
    assert d.allowed and d.reason is None


def test_identify_refused_below_the_reserve_until_the_limit_resets() -> None:
    d = identify_decision(NOW, limit=_limit(99), reserve=100, identifies=[], max_per_day=20)
    assert not d.allowed and d.reason == "reserve"
    assert "99" in d.detail and "100" in d.detail
    assert d.retry_at == NOW + 3600.0


def test_identify_refused_after_the_daily_maximum_until_the_oldest_leaves_the_day() -> None:
    own = [NOW - DAY + 10, NOW - 100, NOW - 50]
    d = identify_decision(NOW, limit=_limit(900), reserve=100, identifies=own, max_per_day=3)
    assert not d.allowed and d.reason == "daily_max"
    assert d.retry_at == NOW + 10
    # One of them older than 24 h no longer counts.
    older = [NOW - DAY - 1, NOW - 100, NOW - 50]
    d = identify_decision(NOW, limit=_limit(900), reserve=100, identifies=older, max_per_day=3)
    assert d.allowed


def test_identify_refused_while_the_start_limit_is_unknown() -> None:
    d = identify_decision(NOW, limit=None, reserve=100, identifies=[], max_per_day=20)
    assert not d.allowed and d.reason == "unknown" and d.retry_at == NOW + 60
    d = identify_decision(
        NOW, limit=None, reserve=100, identifies=[], max_per_day=20, unknown_retry=2.0
    )
    assert d.retry_at == NOW + 2.0


def test_start_limit_from_gateway_bot() -> None:
    body = {
        "url": "wss://gateway.discord.gg",
        "session_start_limit": {
            "total": 1000,
            "remaining": 42,
            "reset_after": 5000,
            "max_concurrency": 2,
        },
    }
    limit = StartLimit.from_gateway_bot(body, NOW)
    assert limit == StartLimit(42, 1000, 5.0, 2, NOW)
    assert StartLimit.from_gateway_bot({"url": "x"}, NOW) is None
    assert StartLimit.from_gateway_bot({"session_start_limit": {"remaining": "x"}}, NOW) is None


def test_identify_spacing_honours_max_concurrency() -> None:
    assert identify_wait(NOW, [], 1) == 0.0
    assert identify_wait(NOW, [NOW - 2.0], 1) == pytest.approx(3.0)
    assert identify_wait(NOW, [NOW - 2.0], 2) == 0.0
    assert identify_wait(NOW, [NOW - 6.0], 1) == 0.0


def test_backoff_grows_caps_and_starts_immediate() -> None:
    assert backoff_delay(0, base=1.0, cap=60.0, jitter=0.9) == 0.0
    assert backoff_delay(1, base=1.0, cap=60.0, jitter=0.0) == 0.5
    assert backoff_delay(1, base=1.0, cap=60.0, jitter=1.0) == pytest.approx(1.0)
    assert backoff_delay(4, base=1.0, cap=60.0, jitter=0.0) == 4.0
    assert backoff_delay(30, base=1.0, cap=60.0, jitter=0.0) == 30.0


# -- protocol -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "after"),
    [
        (None, proto.AfterClose.RESUME),
        (1000, proto.AfterClose.RESUME),
        (1006, proto.AfterClose.RESUME),
        (4000, proto.AfterClose.RESUME),
        (4008, proto.AfterClose.RESUME),
        (4007, proto.AfterClose.IDENTIFY),
        (4009, proto.AfterClose.IDENTIFY),
        (4004, proto.AfterClose.STOP),
        (4013, proto.AfterClose.STOP),
        (4014, proto.AfterClose.STOP),
    ],
)
def test_after_close(code: int | None, after: proto.AfterClose) -> None:
    assert proto.after_close(code) is after


def test_connect_url_and_identify_intents() -> None:
    assert proto.connect_url("wss://g.example/", compress=False) == (
        "wss://g.example/?v=10&encoding=json"
    )
    assert proto.connect_url("wss://g.example?v=9", compress=True) == (
        "wss://g.example/?v=10&encoding=json&compress=zlib-stream"
    )
    payload = proto.decode(proto.identify("tok"))
    assert payload["op"] == 2 and payload["d"]["intents"] == (1 << 0) | (1 << 9)
    assert proto.decode(proto.resume("tok", "sid", 7))["d"] == {
        "token": "tok",
        "session_id": "sid",
        "seq": 7,
    }
    with pytest.raises(ValueError):
        proto.decode("[1]")


def test_zlib_stream_buffers_until_sync_flush_and_keeps_the_context() -> None:
    deflate = zlib.compressobj()
    first = deflate.compress(b'{"op": 10, "d": {"heartbeat_interval": 1}}')
    first += deflate.flush(zlib.Z_SYNC_FLUSH)
    second = deflate.compress(b'{"op": 11}') + deflate.flush(zlib.Z_SYNC_FLUSH)
    stream = proto.ZlibStream()
    assert stream.feed(first[:5]) is None
    assert stream.feed(first[5:]) == '{"op": 10, "d": {"heartbeat_interval": 1}}'
    assert stream.feed(second) == '{"op": 11}'  # needs the shared context


# -- daily creations ------------------------------------------------------------------


def test_creations_count_each_channel_once_over_24h() -> None:
    w = CreationWindow()
    a, b = make_snowflake(NOW - 10), make_snowflake(NOW - DAY - 10)
    assert w.add(a, NOW) and not w.add(a, NOW)
    assert not w.add(b, NOW)  # created more than a day ago
    assert w.add_listed([a, make_snowflake(NOW - 20, increment=1), b], NOW) == 1
    assert w.count(NOW) == 2
    assert w.count(NOW + DAY) == 0


def test_seconds_to_cap_at_the_last_hours_rate() -> None:
    w = CreationWindow()
    w.add_listed([make_snowflake(NOW - 7200 - i, increment=i) for i in range(100)], NOW)
    assert w.seconds_to_cap(NOW, 500) == math.inf  # none in the last hour
    w.add_listed([make_snowflake(NOW - i, increment=i) for i in range(1, 37)], NOW)
    # 136 of 500 used, 36 an hour → (500 - 136) / 0.01 s
    assert w.seconds_to_cap(NOW, 500) == pytest.approx(364 / 0.01)
    assert w.seconds_to_cap(NOW, 100) == 0.0
    assert w.seconds_to_cap(NOW, 0) == math.inf


def test_creations_survive_a_restart_through_the_state_dir(tmp_path: object) -> None:
    state = StateDir(str(tmp_path))
    w = CreationWindow(save=state.save_creations)
    ids = [make_snowflake(NOW - i * 60, increment=i) for i in range(5)]
    for cid in ids:
        w.add(cid, NOW)
    again = CreationWindow(state.load_creations(), save=state.save_creations)
    assert again.count(NOW) == 5
    assert not again.add(ids[0], NOW)


def test_identify_times_survive_a_restart(tmp_path: object) -> None:
    state = StateDir(str(tmp_path))
    assert state.load_identifies() == []
    state.save_identifies([NOW, NOW + 1])
    assert StateDir(str(tmp_path)).load_identifies() == [NOW, NOW + 1]


# -- live guild -----------------------------------------------------------------------


def _live(limit: int = 500) -> tuple[LiveGuild, Metrics]:
    metrics = Metrics(CollectorRegistry())
    live = LiveGuild(
        GUILD,
        creations=CreationWindow(),
        metrics=metrics,
        daily_create_limit=limit,
        resync_interval=1800.0,
    )
    return live, metrics


def _gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"guild": str(GUILD)})


def _channel(name: str, at: float, seq: int = 0) -> dict[str, object]:
    cid = make_snowflake(at, increment=seq)
    return {"id": str(cid), "guild_id": str(GUILD), "name": name, "type": 0}


def test_live_census_follows_events_after_a_listing() -> None:
    live, metrics = _live()
    seen: list[ChannelEvent] = []
    live.subscribe(seen.append)
    live.session_up(resumed=False)
    old = _channel("general", NOW - 5 * DAY)
    live.snapshot_loaded([old], NOW, "rest")
    assert not live.current  # READY alone: the guild's events are not flowing yet
    live.dispatch("GUILD_CREATE", {"id": str(GUILD), "unavailable": True}, NOW)
    assert not live.current  # an unavailable guild sends no events
    live.dispatch("GUILD_CREATE", {"id": str(GUILD), "channels": [old]}, NOW)
    assert _gauge(metrics, "cdpmon_guild_channels") == 1
    assert live.current and not live.needs_listing(NOW)
    new = _channel("cdp-chat-2024abc", NOW)
    live.dispatch("CHANNEL_CREATE", new, NOW + 1)
    assert _gauge(metrics, "cdpmon_guild_channels") == 2
    assert _gauge(metrics, "cdpmon_guild_channel_creates_24h") == 1
    assert _gauge(metrics, "cdpmon_guild_channel_create_limit_daily") == 500
    mid = make_snowflake(NOW + 2)
    live.dispatch(
        "MESSAGE_CREATE", {"id": str(mid), "channel_id": new["id"], "guild_id": str(GUILD)}, NOW + 2
    )
    temp = live.temp_channels()
    assert temp == [
        {
            "id": new["id"],
            "name": "cdp-chat-2024abc",
            "created_at": pytest.approx(NOW, abs=0.001),
            "last_message_at": pytest.approx(NOW + 2, abs=0.001),
        }
    ]
    live.dispatch("CHANNEL_DELETE", new, NOW + 3)
    assert _gauge(metrics, "cdpmon_guild_channels") == 1
    assert _gauge(metrics, "cdpmon_guild_channel_creates_24h") == 1  # a creation stays counted
    assert [e.kind for e in seen] == ["created", "message", "deleted"]
    assert seen[0].name == "cdp-chat-2024abc"


def test_live_census_ignores_other_guilds_and_survives_a_bad_subscriber() -> None:
    live, metrics = _live()
    live.subscribe(lambda e: 1 / 0)  # type: ignore[func-returns-value]
    live.snapshot_loaded([], NOW, "rest")
    other = {**_channel("cdp-chat-x", NOW), "guild_id": "999"}
    live.dispatch("CHANNEL_CREATE", other, NOW)
    assert _gauge(metrics, "cdpmon_guild_channels") == 0
    live.dispatch("CHANNEL_CREATE", _channel("cdp-chat-y", NOW), NOW)
    assert _gauge(metrics, "cdpmon_guild_channels") == 1


def test_needs_listing_at_start_after_a_gap_and_at_the_slow_interval() -> None:
    live, _ = _live()
    assert live.needs_listing(NOW)  # never synced
    live.session_up(resumed=False)
    live.dispatch(
        "GUILD_CREATE", {"id": str(GUILD), "channels": [_channel("a", NOW - DAY * 2)]}, NOW
    )
    assert live.current and live.synced_from == "gateway"
    assert live.needs_listing(NOW)  # no REST listing yet: the first one still runs
    live.snapshot_loaded([_channel("a", NOW - DAY * 2)], NOW, "rest")
    assert not live.needs_listing(NOW + 60)
    assert live.needs_listing(NOW + 1800)  # the slow re-sync
    live.session_down()
    assert live.needs_listing(NOW + 61)  # a gap
    live.snapshot_loaded([], NOW + 62, "rest")
    assert not live.current  # listed during the gap: events after it are still missed
    live.session_up(resumed=True)  # RESUME replays what was missed
    assert live.current and not live.needs_listing(NOW + 63)
    status = live.status(NOW + 63)
    assert status["source"] == "gateway" and status["rest_synced_at"] == NOW + 62
    # A new session (the old one was invalidated): GUILD_CREATE, then one REST listing.
    live.session_down()
    live.session_up(resumed=False)
    live.dispatch("GUILD_CREATE", {"id": str(GUILD), "channels": []}, NOW + 70)
    assert live.current and live.needs_listing(NOW + 70)
    live.snapshot_loaded([], NOW + 71, "rest")
    assert not live.needs_listing(NOW + 72)


def test_creations_from_the_listing_after_a_gap() -> None:
    live, metrics = _live()
    listed = [_channel(f"cdp-chat-{i}", NOW - 3600 * i, i) for i in range(30)]
    live.snapshot_loaded(listed, NOW, "rest")
    assert _gauge(metrics, "cdpmon_guild_channel_creates_24h") == 24  # 0..23 h old
