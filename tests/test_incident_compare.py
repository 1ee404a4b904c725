"""The incident bench's comparison of the adaptive create limit (issue 19): the `ramp`
outage (a slow Discord that never fails), the run kinds (CDP alone, the breaker alone,
the breaker and the limit), the daemon config each gets, the three-run plumbing of
`run_incident` and the rows of the table. No run is timed here: the numbers are
bench/incident.py's (`--compare-limit`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import monitor.demo.run as demo_run
from monitor.config import parse_config
from monitor.demo import (
    COMPARE_RUNS,
    DEFAULT_RUNS,
    IncidentReport,
    RunResult,
    ScenarioSettings,
    daemon_config_dict,
    format_summary,
    outage_faults,
    outage_steps,
    run_incident,
    run_kinds,
    summary_rows,
)
from monitor.demo.events import BreakerChanged, Event, LimitLowered, RunStarted
from monitor.demo.narration import event_text
from monitor.demo.results import breaker_open_for
from monitor.demo.settings import CREATE_ROUTE
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator
from tests.helpers.sim import put_faults

RAMP = ScenarioSettings(outage_kind="ramp", outage=10.0)


def test_the_ramp_rises_to_just_under_discordgos_timeout_without_errors() -> None:
    steps = outage_steps(RAMP)
    offsets = [offset for offset, _ in steps]
    # It rises over the first half of the outage, then stays at its peak.
    assert offsets[0] == 0.0 and offsets == sorted(set(offsets))
    assert offsets[-1] == pytest.approx(RAMP.outage / 2)
    rests = [body["rest"] for _, body in steps]
    latencies = [rest["latency_ms"] / 1000 for rest in rests]
    assert latencies == sorted(latencies) and latencies[0] < latencies[-1]
    for rest in rests:
        # Only creation slows down; nothing fails: no error, no 429, no hang.
        assert rest["routes"] == [CREATE_ROUTE]
        assert set(rest) == {"latency_ms", "jitter_ms", "routes"}
        # Never a discordgo client timeout, jitter included: queueing only.
        assert (rest["latency_ms"] + rest["jitter_ms"]) / 1000 < RAMP.http_timeout
    # At its peak a queue of four passes CDP's attempt timeout; at its start none does
    # at the load's rate (3/s: a new create every 1/3 s on average).
    assert 4 * latencies[-1] > RAMP.attempt_timeout
    assert latencies[0] < 1 / RAMP.rate
    assert outage_faults(RAMP) == steps[0][1]
    assert RAMP.create_latency == pytest.approx(latencies[-1])


@pytest.mark.parametrize("kind", ["slow", "ratelimit", "hung", "tokens"])
def test_other_outages_are_one_step(kind: str) -> None:
    settings = ScenarioSettings(outage_kind=kind)
    assert outage_steps(settings) == [(0.0, outage_faults(settings))]


async def test_every_ramp_step_is_a_fault_the_simulator_takes(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    for _, body in outage_steps(RAMP):
        faults = await put_faults(http, discord_sim, **body)
        assert faults["rest"]["latency_ms"] == body["rest"]["latency_ms"]
        assert faults["rest"]["error_rate"] == 0 and faults["rest"]["shared_429_rate"] == 0


def test_run_kinds_are_named_checked_and_ordered() -> None:
    assert [k.name for k in run_kinds(COMPARE_RUNS)] == ["without", "breaker", "limit"]
    assert [k.name for k in run_kinds("without, with")] == list(DEFAULT_RUNS)
    kinds = {k.name: k for k in run_kinds("without,with,breaker,limit")}
    assert not kinds["without"].monitor
    assert kinds["breaker"].monitor and kinds["breaker"].adaptive_limit is False
    assert kinds["limit"].monitor and kinds["limit"].adaptive_limit is True
    assert kinds["with"].adaptive_limit is None  # the daemon's default
    for bad in ("", "without,meteor", "limit,limit"):
        with pytest.raises(ValueError):
            run_kinds(bad)


@pytest.fixture
async def cdp(discord_sim: DiscordSimulator) -> AsyncIterator[CdpEmulator]:
    emu = CdpEmulator(CdpSettings.for_simulator(discord_sim))
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.mark.parametrize("adaptive", [None, False, True])
async def test_each_run_kind_gets_its_gate_config(
    adaptive: bool | None, discord_sim: DiscordSimulator, cdp: CdpEmulator, tmp_path: Path
) -> None:
    raw = daemon_config_dict(
        RAMP,
        discord_sim,
        cdp,
        state_dir=tmp_path / "state",
        cdp_log=tmp_path / "cdp.log",
        adaptive_limit=adaptive,
    )
    config = parse_config(yaml.safe_dump(raw))
    default = parse_config(yaml.safe_dump({**raw, "gate": {"upstream": cdp.base_url}}))
    expected = default.gate.adaptive_limit if adaptive is None else adaptive
    assert config.gate.adaptive_limit is expected
    # The limit's deadline is CDP's attempt timeout, compressed as the emulator's is.
    assert config.cdp.create_attempt_timeout == RAMP.attempt_timeout


async def test_run_incident_runs_each_kind_in_order_into_one_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str | None, Path | None]] = []

    async def one(settings: ScenarioSettings, **kwargs: Any) -> RunResult:
        calls.append((kwargs["run"], kwargs["workdir"]))
        return RunResult(run=kwargs["run"], settings=settings, duration=1.0)

    monkeypatch.setattr(demo_run, "run_once", one)
    events: list[Event] = []
    report = await run_incident(RAMP, runs=COMPARE_RUNS, workdir=tmp_path, on_event=events.append)
    assert [name for name, _ in calls] == list(COMPARE_RUNS)
    assert all(workdir == tmp_path for _, workdir in calls)
    assert [r.run for r in report.runs] == list(COMPARE_RUNS)
    started = [e for e in events if isinstance(e, RunStarted)]
    assert [(e.number, e.run, e.with_monitor) for e in started] == [
        (1, "without", False),
        (2, "breaker", True),
        (3, "limit", True),
    ]
    assert report.without is report.runs[0] and report.with_monitor is None
    assert report.run("limit") is report.runs[2]
    calls.clear()
    default = await run_incident(RAMP, workdir=tmp_path)  # the demo's two runs
    assert [name for name, _ in calls] == list(DEFAULT_RUNS)
    assert default.with_monitor is default.runs[1]


def _changed(t: float, old: str, new: str) -> BreakerChanged:
    return BreakerChanged(
        t=t, run="breaker", old=old, new=new, reason="", first_open=False, inflight=0
    )


def test_breaker_open_time_counts_open_and_half_open_until_closed() -> None:
    events: list[Event] = [
        _changed(5.0, "closed", "open"),
        _changed(7.0, "open", "half_open"),
        _changed(7.5, "half_open", "closed"),
        _changed(10.0, "closed", "open"),
    ]
    assert breaker_open_for(events, end=12.0) == pytest.approx(2.5 + 2.0)
    assert breaker_open_for([], end=12.0) == 0.0


def test_the_table_has_a_column_per_run_and_the_limit_rows() -> None:
    report = IncidentReport(RAMP)
    for name, late in zip(COMPARE_RUNS, (12, 5, 0), strict=True):
        report.runs.append(
            RunResult(run=name, settings=RAMP, requests=60, ok=50, late_channels=late)
        )
    report.runs[1].retrying_lines = 4
    report.runs[1].creates_at_cdp = 33
    report.runs[1].breaker_open_for = 3.5
    report.runs[2].limited = 7
    header, _, *lines = format_summary(report, detail=True).splitlines()
    columns = ("without cdp-monitor", "breaker alone", "breaker + limit")
    assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
    rows = dict(summary_rows(report, detail=True))
    assert rows["channels from abandoned attempts"] == ["12", "5", "0"]
    assert rows["`retrying` lines in CDP's log"] == ["0", "4", "0"]
    assert rows["creates that reached CDP"] == ["0", "33", "0"]
    assert rows["breaker open (incl. half-open), s"] == ["-", "3.5", "0.0"]
    assert rows["creates refused by the limit"] == ["-", "0", "7"]
    assert rows["client success ratio"] == ["83%", "83%", "83%"]
    assert len(lines) == len(rows)


def test_the_demo_narrates_the_limit_coming_down() -> None:
    text = event_text(LimitLowered(t=4.3, run="with", limit=2, per_create=0.4, budget=1.125))
    assert "0.4s per channel" in text and "at most 2 creates" in text and "1.125s" in text
