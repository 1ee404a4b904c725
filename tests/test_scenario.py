"""The incident scenario end to end: the Discord simulator, the CDP emulator (with CDP's
leak), openai clients and the daemon with its real components, on short timelines.

The incident runs once for the module (both runs, about 25 s); the tests read its report.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

import aiohttp
import pytest

from monitor.demo import (
    OUTAGE_KINDS,
    IncidentReport,
    RunResult,
    ScenarioSettings,
    format_summary,
    outage_faults,
    prefill_settings,
    run_demo,
    run_incident,
    run_once,
)
from monitor.demo.events import BreakerChanged, Event, OutageStarted, Recovered
from monitor.demo.narration import event_text
from monitor.demo.settings import cdp_faults
from monitor.errors import ScenarioError
from monitor.sim.discord import DiscordSimulator
from monitor.vocab import CHANNEL_PREFIX
from tests.helpers.sim import put_faults

# Creates hang past discordgo's client timeout: each request in the outage fails at once
# and Discord still creates its channel afterwards (the queue-driven kind, `slow`, is
# the demo's; it needs a longer outage to leak).
SHORT = ScenarioSettings(
    rate=2, healthy=1.5, outage=3.5, after=2, client_timeout=15, tail=15, outage_kind="hung"
)


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> tuple[IncidentReport, Path]:
    workdir = tmp_path_factory.mktemp("incident")
    report = asyncio.run(run_incident(SHORT, workdir=workdir))
    return report, workdir


def runs(incident: tuple[IncidentReport, Path]) -> tuple[RunResult, RunResult]:
    report = incident[0]
    assert report.without is not None and report.with_monitor is not None
    return report.without, report.with_monitor


def test_without_cdp_monitor_the_outage_leaks_channels(
    incident: tuple[IncidentReport, Path],
) -> None:
    without, _ = runs(incident)
    assert not without.interrupted
    assert without.late_channels > 0  # abandoned attempts created channels
    assert without.leaked_at_end >= without.late_channels
    assert without.recovery_to_clean is None
    assert without.breaker_opened_at is None and without.reconcile_deleted == 0


def _open_through(events: list[Event], opened: int, start: int) -> bool:
    """The breaker, opened at `opened`, was not closed again before index `start`."""
    return not any(
        isinstance(e, BreakerChanged) and e.new == "closed" for e in events[opened:start]
    )


def test_with_cdp_monitor_the_peak_is_what_was_already_in_flight(
    incident: tuple[IncidentReport, Path],
) -> None:
    _, with_ = runs(incident)
    s = with_.settings
    assert with_.breaker_opened_at is not None
    # It opened during the outage: between the two events, in the order they were
    # recorded (how many seconds into the outage is the benchmark's to measure).
    # (On a heavily loaded machine a slow probe may also open it during the healthy
    # phase; what matters here is that the outage itself opens it.)
    kinds = [type(e) for e in with_.events]
    start, end = kinds.index(OutageStarted), kinds.index(Recovered)
    opens = [
        i
        for i, e in enumerate(with_.events)
        if isinstance(e, BreakerChanged) and e.new == "open" and e.old != "open"
    ]
    assert any(start < i < end for i in opens) or (
        opens and opens[0] < start and _open_through(with_.events, opens[0], start)
    )
    assert with_.inflight_at_open is not None
    assert with_.inflight_at_open <= s.max_concurrent_creates + with_.exposed_requests
    # Leaks come only from requests let in before the breaker opened (and trial slots),
    # each leaving at most CDP's `attempts` channels.
    assert with_.late_channels <= s.attempts * with_.exposed_requests
    # Channels in use or leaked: the cap, plus what those requests can leave behind.
    assert with_.peak_held_channels <= with_.held_bound
    assert with_.refused > 0  # refused with Retry-After instead of let through


def test_with_cdp_monitor_nothing_is_left_leaked_and_nothing_in_use_deleted(
    incident: tuple[IncidentReport, Path],
) -> None:
    _, with_ = runs(incident)
    assert with_.late_channels > 0  # there was something to clean up
    assert with_.leaked_at_end == 0
    assert with_.recovery_to_clean is not None
    assert with_.reconcile_deleted >= with_.late_channels
    assert with_.in_use_deleted == 0
    audit = incident[1] / "with" / "state" / "audit.jsonl"
    lines = [x for x in map(json.loads, audit.read_text().splitlines()) if x["event"] != "intent"]
    assert len(lines) == with_.reconcile_deleted
    assert all(line["name"].startswith(CHANNEL_PREFIX) for line in lines)
    assert not any(line["dry_run"] for line in lines)


def test_with_cdp_monitor_no_30013_and_no_429_caused_by_it(
    incident: tuple[IncidentReport, Path],
) -> None:
    _, with_ = runs(incident)
    assert with_.errors_30013 == 0 and with_.discord_30013 == 0
    assert with_.monitor_429 == 0
    assert with_.discord_429_monitor_routes == 0


def test_every_recorded_event_has_a_sentence(incident: tuple[IncidentReport, Path]) -> None:
    for result in runs(incident):
        assert result.events
        for event in result.events:
            assert event_text(event) != type(event).__name__


def test_summary_shows_both_runs_side_by_side(incident: tuple[IncidentReport, Path]) -> None:
    without, _ = runs(incident)
    table = format_summary(incident[0], detail=True)
    header, _, *rows = table.splitlines()
    assert "without cdp-monitor" in header and "with cdp-monitor" in header
    leaked = next(r for r in rows if r.startswith("channels left leaked at the end"))
    assert leaked.split()[-2:] == [str(without.leaked_at_end), "0"]


async def test_prefilled_guild_gets_back_under_the_watermark_without_30013(
    tmp_path: Path,
) -> None:
    # 95% of a smaller guild: the same ratio, deleted in seconds.
    settings = prefill_settings(
        channel_limit=100, prefill=95, rate=2, healthy=1.5, outage=2.5, after=1.5, tail=15
    )
    with_ = await run_once(settings, with_monitor=True, workdir=tmp_path)
    assert with_.under_watermark_at is not None
    assert with_.peak_channels < settings.channel_limit
    assert with_.errors_30013 == 0 and with_.discord_30013 == 0
    assert with_.reconcile_reasons.get("empty_aged", 0) >= 95 - settings.watermark_channels
    assert with_.in_use_deleted == 0 and with_.monitor_429 == 0


async def test_demo_narrates_both_runs_and_summarises() -> None:
    out = io.StringIO()
    # Hung creates: every probe and the gate see them, so the breaker opens even in 3 s.
    tiny = ScenarioSettings(
        rate=2, healthy=1, outage=3, after=1, client_timeout=10, tail=10, outage_kind="hung"
    )
    assert await run_demo(out=out, settings=tiny) == 0
    text = out.getvalue()
    assert "Run 1 of 2: without cdp-monitor" in text and "Run 2 of 2: with cdp-monitor" in text
    assert "The outage starts" in text and "Discord recovers" in text
    assert "breaker OPEN" in text
    assert "Side by side" in text and "channels left leaked at the end" in text


async def test_demo_stops_cleanly_when_asked() -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, stop.set)
    assert await run_demo(out=out, stop=stop) == 0
    text = out.getvalue()
    assert "Stopped early" in text and "Side by side" not in text


async def test_a_missing_openai_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` raises ImportError
    with pytest.raises(ScenarioError, match="openai"):
        await run_once(SHORT, with_monitor=False)


@pytest.mark.parametrize(
    "bad",
    [{"outage_kind": "meteor"}, {"rate": 0}, {"prefill": 600}, {"scenario": "other"}],
)
def test_settings_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ScenarioSettings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(OUTAGE_KINDS))
async def test_every_outage_kind_is_a_fault_the_simulator_takes(
    kind: str, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    settings = ScenarioSettings(outage_kind=kind)
    faults = await put_faults(http, discord_sim, **outage_faults(settings))
    if kind == "tokens":  # CDP's own trouble: Discord stays fine
        assert cdp_faults(settings) == {"user_tokens": []}
        assert faults["rest"]["latency_ms"] == 0
        return
    assert cdp_faults(settings) is None
    assert "POST /guilds/{guild_id}/channels" in faults["rest"]["routes"]
    latency = faults["rest"]["latency_ms"] / 1000
    if kind == "slow":  # under discordgo's client timeout: a queue, not an error
        assert latency < settings.http_timeout < settings.attempt_timeout
        assert latency * 4 > settings.attempt_timeout  # the 4th queued create passes it
    if kind == "hung":  # past it: a 20 s error, the channel comes later
        assert latency > settings.http_timeout
    if kind == "ratelimit":
        assert faults["rest"]["shared_429_rate"] > 0
