from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import FakeClock
from monitor.config import parse_config
from monitor.errors import PauseNotPersistedError, StateError
from monitor.health.breaker import BreakerSettings, HealthBreaker, open_duration
from monitor.health.effects import TransitionEffects
from monitor.health.owner import Health
from monitor.health.window import Sample, SampleWindow, evaluate, window_settings
from monitor.metrics import Metrics
from monitor.state import StateDir
from tests.helpers.metrics import sample

T0 = 1_700_000_000.0
# The daemon's own defaults (monitor.yaml), so the product ships what is tested here.
DEFAULTS = parse_config("discord: {token: t0ken, guild_id: 1}")
HEALTH = window_settings(DEFAULTS.health, DEFAULTS.probes)
SETTINGS = BreakerSettings(
    reset_timeout=60.0,
    success_threshold=3,
    backoff_factor=2.0,
    max_reset_timeout=600.0,
    backoff_reset_after=3600.0,
    half_open_max_trials=2,
)


@dataclass
class Transitions:
    seen: list[tuple[str, str, str, float]] = field(default_factory=list)

    def __call__(self, old: str, new: str, reason: str, now: float) -> None:
        self.seen.append((old, new, reason, now))

    @property
    def path(self) -> list[str]:
        return [self.seen[0][0], *(t[1] for t in self.seen)] if self.seen else []


def new_breaker(**kw: object) -> tuple[HealthBreaker, Transitions]:
    rec = Transitions()
    return HealthBreaker(SETTINGS, listeners=[rec], now=T0, **kw), rec  # type: ignore[arg-type]


# -- open_duration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trips", "seconds"), [(0, 60), (1, 60), (2, 120), (3, 240), (4, 480), (5, 600), (9, 600)]
)
def test_open_duration_backs_off_and_caps(trips: int, seconds: float) -> None:
    assert open_duration(trips, SETTINGS) == seconds


def test_open_duration_survives_huge_trip_counts() -> None:
    assert open_duration(10**6, SETTINGS) == 600.0


def test_open_duration_without_backoff() -> None:
    flat = replace(SETTINGS, reset_timeout=30, backoff_factor=1.0, max_reset_timeout=30)
    assert [open_duration(n, flat) for n in (1, 2, 50)] == [30, 30, 30]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reset_timeout": 0},
        {"reset_timeout": 60, "max_reset_timeout": 30},
        {"backoff_factor": 0.5},
        {"success_threshold": 0},
        {"half_open_max_trials": 0},
    ],
)
def test_settings_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        replace(SETTINGS, **kwargs)  # type: ignore[arg-type]


# -- the state machine ---------------------------------------------------------------


def test_hard_outage_sequence_with_backoff() -> None:
    b, rec = new_breaker()
    assert (b.state, b.retry_at, b.trips) == ("closed", None, 0)
    assert b.record(False, T0 + 5) == "closed"

    # Outage: one unstable evaluation trips.
    assert b.record(True, T0 + 10, reason="failure ratio 0.67 >= 0.50") == "open"
    assert (b.since, b.retry_at, b.trips) == (T0 + 10, T0 + 70, 1)
    assert rec.seen[-1] == (
        "closed",
        "open",
        "failure ratio 0.67 >= 0.50; open for 1m (trip 1)",
        T0 + 10,
    )
    # While open, verdicts change nothing and do not extend the open period.
    assert b.record(False, T0 + 40) == "open"
    assert b.record(True, T0 + 65) == "open"
    assert b.retry_at == T0 + 70
    assert b.tick(T0 + 69.9) == "open"

    # After reset_timeout: half-open; success_threshold healthy evaluations close it.
    assert b.tick(T0 + 70) == "half_open"
    assert b.retry_at == T0 + 70
    assert b.record(False, T0 + 75) == "half_open"
    assert b.record(False, T0 + 80) == "half_open"
    assert b.snapshot()["half_open"]["successes"] == 2
    assert b.record(False, T0 + 85) == "closed"
    assert rec.seen[-1] == ("half_open", "closed", "3 healthy evaluations in half-open", T0 + 85)

    # A second outage soon after stays open twice as long.
    assert b.record(True, T0 + 100) == "open"
    assert (b.trips, b.retry_at) == (2, T0 + 100 + 120)
    assert b.tick(T0 + 219) == "open"
    assert b.tick(T0 + 220) == "half_open"
    # Unstable during half-open: straight back to open, longer again.
    assert b.record(True, T0 + 225) == "open"
    assert (b.trips, b.retry_at) == (3, T0 + 225 + 240)
    assert b.tick(T0 + 465) == "half_open"
    for t in (470, 475, 480):
        b.record(False, T0 + t)
    assert b.state == "closed"
    assert b.trips == 3

    # Continuous closed health for backoff_reset_after: back to the base period.
    b.tick(T0 + 480 + 3599)
    assert b.trips == 3
    b.tick(T0 + 480 + 3600)
    assert b.trips == 0
    assert b.record(True, T0 + 5000) == "open"
    assert b.retry_at == T0 + 5000 + 60

    assert rec.path == [
        "closed",
        "open",
        "half_open",
        "closed",
        "open",
        "half_open",
        "open",
        "half_open",
        "closed",
        "open",
    ]


def test_backoff_reset_applies_even_without_a_tick() -> None:
    b, _ = new_breaker()
    b.record(True, T0)
    b.tick(T0 + 60)
    for t in (61, 62, 63):
        b.record(False, T0 + t)
    assert (b.state, b.trips) == ("closed", 1)
    # The next evaluation arrives long after: this trip counts as the first again.
    b.record(True, T0 + 63 + 3600)
    assert (b.trips, b.retry_at) == (1, T0 + 63 + 3600 + 60)


def test_inconclusive_evaluation_does_not_close_half_open() -> None:
    b, _ = new_breaker()
    b.record(True, T0)
    b.tick(T0 + 60)
    insufficient = evaluate([], T0 + 61, HEALTH)
    for t in range(61, 80):
        assert b.record_verdict(insufficient, T0 + t) == "half_open"
    assert b.snapshot()["half_open"]["successes"] == 0
    healthy = [Sample("gateway", T0 + 80 - i, True, 0.1) for i in range(6)]
    for t in (81, 82, 83):
        b.record_verdict(evaluate(healthy, T0 + t, HEALTH), T0 + t)
    assert b.state == "closed"


def test_half_open_trial_admission_is_bounded() -> None:
    b, _ = new_breaker()
    assert b.allows_create(T0)
    assert all(b.try_admit_create(T0) for _ in range(100))  # closed: no limit

    b.record(True, T0 + 1)
    assert not b.allows_create(T0 + 2)
    assert not b.try_admit_create(T0 + 2)
    assert b.retry_after(T0 + 2) == 59

    # allows_create applies the timer itself, without waiting for an evaluation.
    assert b.allows_create(T0 + 61)
    assert b.state == "half_open"
    assert b.try_admit_create(T0 + 61)
    assert b.try_admit_create(T0 + 62)
    assert not b.try_admit_create(T0 + 63)
    assert not b.allows_create(T0 + 63)
    assert b.snapshot()["half_open"]["trials_admitted"] == 2

    # A fresh half-open period gets fresh trial slots.
    b.record(True, T0 + 64)
    assert b.state == "open"
    assert b.try_admit_create(T0 + 64 + 120)
    assert b.state == "half_open"


def test_snapshot_is_json_ready_and_uses_injected_time() -> None:
    b, _ = new_breaker()
    b.record(True, T0 + 10, reason="r")
    snap = b.snapshot()
    json.dumps(snap)
    assert snap["state"] == "open"
    assert snap["since"] == T0 + 10
    assert snap["retry_at"] == T0 + 70
    assert snap["opened_at"] == T0 + 10  # pybreaker's opened_at stamp came from `now`
    assert snap["open_duration"] == 60
    assert snap["paused"] is None
    assert snap["last_transition"]["to"] == "open"


def test_raising_listener_does_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def broken(old: str, new: str, reason: str, now: float) -> None:
        raise RuntimeError("metrics backend down")

    rec = Transitions()
    b = HealthBreaker(SETTINGS, listeners=[broken, rec], now=T0)
    with caplog.at_level(logging.ERROR, logger="monitor.health.breaker"):
        assert b.record(True, T0) == "open"
    assert rec.path == ["closed", "open"]
    assert "metrics backend down" in caplog.text


def test_reconfigure_changes_thresholds() -> None:
    b, _ = new_breaker()
    b.record(True, T0)
    b.reconfigure(replace(SETTINGS, reset_timeout=10, success_threshold=1, max_reset_timeout=10))
    assert b.retry_at == T0 + 10
    b.tick(T0 + 10)
    assert b.record(False, T0 + 11) == "closed"


# -- a noisy but healthy Discord, and a real outage, simulated -----------------------

GATEWAY_EVERY, REST_EVERY, EVALUATE_EVERY = 15.0, 30.0, 5.0


@dataclass
class SimResult:
    transitions: Transitions
    failures: int
    slow: int
    max_failure_ratio: float


def simulate(
    seed: int,
    hours: float,
    outage: tuple[float, float] | None = None,
    outage_sources: tuple[str, ...] = ("gateway", "rest"),
) -> SimResult:
    """Probes on their intervals, evaluated every 5 s, all in simulated time."""
    rng = random.Random(seed)
    rec = Transitions()
    breaker = HealthBreaker(SETTINGS, listeners=[rec], now=T0)
    window = SampleWindow()
    failures = slow = 0
    max_fr = 0.0

    def probe(source: str, at: float, base: float, slow_at: float) -> Sample:
        nonlocal failures, slow
        if outage and outage[0] <= at < outage[1] and source in outage_sources:
            failures += 1
            return Sample(source, at + 0.5, False, 0.5)  # Discord refuses fast
        if rng.random() < 0.01:
            failures += 1
            return Sample(source, at + 10, False, 10.0)  # the odd timeout
        latency = base + abs(rng.gauss(0, base / 3))
        if rng.random() < 0.03:
            latency = rng.uniform(slow_at * 1.1, slow_at * 3)  # a latency spike
            slow += 1
        return Sample(source, at + latency, True, latency)

    pending: list[Sample] = []
    next_gateway, next_rest = T0 + 3.0, T0 + 11.0  # not aligned with the evaluations
    t = T0
    end = T0 + hours * 3600
    while t < end:
        t += EVALUATE_EVERY
        while next_gateway <= t:
            pending.append(probe("gateway", next_gateway, 0.15, 1.0))
            next_gateway += GATEWAY_EVERY
        while next_rest <= t:
            pending.append(probe("rest", next_rest, 0.08, 2.0))
            next_rest += REST_EVERY
        # A probe's sample exists once the probe has finished.
        for s in [s for s in pending if s.at <= t]:
            window.append(s)
            pending.remove(s)
        verdict = window.evaluate(t, HEALTH)
        max_fr = max(max_fr, verdict.failure_ratio if verdict.conclusive else 0.0)
        breaker.record_verdict(verdict, t)
    return SimResult(rec, failures, slow, max_fr)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noisy_but_healthy_discord_never_opens(seed: int) -> None:
    result = simulate(seed, hours=2)
    # The noise really was there...
    assert result.failures > 0 and result.slow > 10
    # ...and never opened the breaker.
    assert [t for t in result.transitions.seen if t[1] == "open"] == []
    assert result.max_failure_ratio < HEALTH.failure_ratio


@pytest.mark.parametrize("sources", [("gateway", "rest"), ("gateway",)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_real_outage_opens_within_three_gateway_intervals(
    seed: int, sources: tuple[str, ...]
) -> None:
    start = T0 + 3600 + 7
    result = simulate(seed, hours=2, outage=(start, start + 600), outage_sources=sources)
    opens = [t for t in result.transitions.seen if t[1] == "open"]
    assert opens, "the outage never opened the breaker"
    first = opens[0][3]
    assert start < first <= start + 3 * GATEWAY_EVERY
    # And it recovers after the outage: the last transition is to closed.
    assert result.transitions.seen[-1][1] == "closed"
    assert result.transitions.seen[-1][3] < start + 600 + 600


# -- pause and persistence -----------------------------------------------------------


def test_pause_persists_across_restarts(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "state")
    b, rec = new_breaker(state_dir=sd)
    b.pause(T0 + 1, reason="discord maintenance", until=T0 + 601)
    assert b.state == "forced_open"
    assert b.paused == {"reason": "discord maintenance", "until": T0 + 601}
    assert rec.seen == [("closed", "forced_open", "paused for 10m: discord maintenance", T0 + 1)]

    restarted = HealthBreaker(SETTINGS, state_dir=sd, now=T0 + 100)
    assert restarted.state == "forced_open"
    assert restarted.since == T0 + 1
    assert restarted.paused == {"reason": "discord maintenance", "until": T0 + 601}
    assert restarted.retry_at == T0 + 601
    assert not restarted.allows_create(T0 + 100)
    assert restarted.retry_after(T0 + 100) == 501


def test_forced_open_ignores_timer_and_healthy_verdicts() -> None:
    b, rec = new_breaker()
    b.record(True, T0)  # open, retry at T0+60
    b.pause(T0 + 1, reason="hands off")
    for t in range(60, 10_000, 60):
        assert b.record(False, T0 + t) == "forced_open"
        assert b.tick(T0 + t) == "forced_open"
    assert not b.allows_create(T0 + 10_000)
    assert b.retry_at is None and b.retry_after(T0 + 10_000) == 60
    assert rec.path == ["closed", "open", "forced_open"]


def test_expired_pause_lifts_itself(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    b, rec = new_breaker(state_dir=sd)
    b.pause(T0, until=T0 + 300)
    assert b.record(False, T0 + 299) == "forced_open"
    # Expiry applies on the next evaluation (or tick), even after a restart.
    restarted = HealthBreaker(SETTINGS, state_dir=sd, now=T0 + 400, listeners=[rec])
    assert restarted.state == "forced_open"
    assert restarted.record(False, T0 + 400) == "closed"
    assert rec.seen[-1] == ("forced_open", "closed", "pause expired (no reason)", T0 + 400)
    assert sd.load_pause() is None
    assert HealthBreaker(SETTINGS, state_dir=sd, now=T0 + 401).state == "closed"


def test_resume_clears_pause_and_keeps_backoff(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    b, rec = new_breaker(state_dir=sd)
    assert not b.resume(T0)
    b.record(True, T0)  # trip 1
    b.pause(T0 + 5, reason="x")
    assert b.resume(T0 + 10)
    assert (b.state, b.paused, b.since) == ("closed", None, T0 + 10)
    assert rec.seen[-1] == ("forced_open", "closed", "resumed by operator", T0 + 10)
    assert sd.load_pause() is None
    assert not b.resume(T0 + 11)
    assert b.allows_create(T0 + 11)
    # Still a repeated trip: the pause did not count as healthy closed time.
    b.record(True, T0 + 20)
    assert (b.trips, b.retry_at) == (2, T0 + 20 + 120)


def test_repause_updates_reason_and_expiry_without_new_transition() -> None:
    b, rec = new_breaker()
    b.pause(T0, reason="a", until=T0 + 60)
    b.pause(T0 + 30, reason="b")
    assert b.paused == {"reason": "b", "until": None}
    assert b.since == T0
    assert b.tick(T0 + 10_000) == "forced_open"
    assert rec.path == ["closed", "forced_open"]


def test_pause_in_the_past_is_refused() -> None:
    b, _ = new_breaker()
    with pytest.raises(ValueError):
        b.pause(T0, until=T0)
    assert b.state == "closed"


def test_backoff_and_open_state_survive_restart(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    b, _ = new_breaker(state_dir=sd)
    b.record(True, T0)
    b.tick(T0 + 60)
    b.record(True, T0 + 61)  # trip 2: open until T0+181
    restarted = HealthBreaker(SETTINGS, state_dir=sd, now=T0 + 100)
    assert (restarted.state, restarted.trips, restarted.retry_at) == ("open", 2, T0 + 181)
    assert restarted.tick(T0 + 181) == "half_open"
    for t in (182, 183, 184):
        restarted.record(False, T0 + t)
    assert restarted.state == "closed"
    restarted.record(True, T0 + 200)
    assert (restarted.trips, restarted.retry_at) == (3, T0 + 200 + 240)


def test_corrupt_breaker_file_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sd = StateDir(tmp_path)
    (tmp_path / "breaker.json").write_text("{garbage")
    (tmp_path / "pause.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        b = HealthBreaker(SETTINGS, state_dir=sd, now=T0)
    assert (b.state, b.trips, b.paused) == ("closed", 0, None)
    assert "breaker.json" in caplog.text and "pause.json" in caplog.text


def test_persistence_failure_is_logged_and_a_pause_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sd = StateDir(tmp_path)
    b, _ = new_breaker(state_dir=sd)

    def disk_full(*args: object) -> None:
        raise StateError("No space left on device", path="breaker.json")

    monkeypatch.setattr(sd, "write_json", disk_full)
    with caplog.at_level(logging.ERROR, logger="monitor.health.breaker"):
        assert b.record(True, T0) == "open"  # a machine transition: logged only
        with pytest.raises(PauseNotPersistedError, match="a restart would lose the pause"):
            b.pause(T0 + 1, reason="x")
    assert b.state == "forced_open"
    assert b.paused == {"reason": "x", "until": None, "persisted": False}
    assert "cannot persist breaker state" in caplog.text


def _break(state: Path) -> None:
    """A file where the state directory should be: every write fails (even as root)."""
    shutil.rmtree(state)
    state.write_text("not a directory")


def test_a_pause_that_cannot_be_saved_is_an_error_and_says_so(tmp_path: Path) -> None:
    # Red team: a pause that could not be saved answered 200 and was gone after a restart.
    state = tmp_path / "state"
    sd = StateDir(state)
    b, _ = new_breaker(state_dir=sd)
    _break(state)
    with pytest.raises(PauseNotPersistedError) as err:
        b.pause(T0 + 1, reason="incident", until=T0 + 600)
    assert "not a directory" in str(err.value).lower() and err.value.paused
    # In force (the safer side), but nothing claims it would survive a restart.
    assert not b.allows_create(T0 + 2)
    assert b.paused == {"reason": "incident", "until": T0 + 600, "persisted": False}
    state.unlink()
    assert HealthBreaker(SETTINGS, state_dir=StateDir(state), now=T0 + 3).paused is None


def test_a_resume_that_cannot_be_saved_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sd = StateDir(state)
    b, _ = new_breaker(state_dir=sd)
    b.pause(T0 + 1, reason="incident")
    (state / "pause.json").rename(tmp_path / "saved-pause.json")
    _break(state)
    with pytest.raises(PauseNotPersistedError, match="a restart would pause again") as err:
        b.resume(T0 + 2)
    assert not err.value.paused and b.state == "closed"


def test_resume_closes_a_machine_open_breaker(tmp_path: Path) -> None:
    b, rec = new_breaker(state_dir=StateDir(tmp_path))
    b.record(True, T0)
    assert b.state == "open" and not b.allows_create(T0 + 1)
    assert b.resume(T0 + 1)
    assert b.state == "closed" and b.allows_create(T0 + 1)
    assert rec.seen[-1] == ("open", "closed", "resumed by operator", T0 + 1)
    assert HealthBreaker(SETTINGS, state_dir=StateDir(tmp_path), now=T0 + 2).state == "closed"
    assert not b.resume(T0 + 2)  # nothing to do


def test_health_resume_closes_a_stuck_breaker_and_judges_at_once() -> None:
    clock = FakeClock(T0)
    health = Health(HEALTH, SETTINGS, evaluate_interval=1.0, clock=clock)
    health.breaker.record(True, T0)
    assert health.resume(T0 + 1) and health.breaker.state == "closed"
    assert health.evaluate(T0 + 1).unstable is False  # no samples: stays closed
    assert health.breaker.state == "closed"
    for i in range(20):  # Discord still failing: the judgement reopens it at once
        health.add_sample(Sample("rest", T0 + 2 + i * 0.1, False, 0.1))
    health.evaluate(T0 + 5)
    assert health.breaker.state == "open"
    assert health.resume(T0 + 6) and health.breaker.state == "open"


def _write_breaker(path: Path, **fields: object) -> None:
    record = {"state": "open", "since": T0, "trips": 1, "opened_at": T0, **fields}
    path.write_text(json.dumps(record))


def test_opened_at_30_days_ahead_is_reset_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Red team: a breaker.json with opened_at 30 days ahead refused creates for 30 days.
    _write_breaker(tmp_path / "breaker.json", opened_at=T0 + 30 * 86400)
    with caplog.at_level(logging.WARNING):
        b = HealthBreaker(SETTINGS, state_dir=StateDir(tmp_path), now=T0)
    assert b.state == "closed" and b.allows_create(T0)
    assert "opened_at" in caplog.text and "in the future" in caplog.text


def test_a_small_skew_is_tolerated(tmp_path: Path) -> None:
    _write_breaker(tmp_path / "breaker.json", since=T0 + 60, opened_at=T0 + 60)
    b = HealthBreaker(SETTINGS, state_dir=StateDir(tmp_path), now=T0)
    assert b.state == "open" and b.retry_at == T0 + 120


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_reset_and_status_stays_strict_json(
    tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"state": "open", "since": T0, "trips": 1, "opened_at": T0}
    for key in ("since", "opened_at", "trips"):
        text = json.dumps(good).replace(f'"{key}": {good[key]}', f'"{key}": {bad}')
        assert bad in text
        (tmp_path / "breaker.json").write_text(text)
        with caplog.at_level(logging.WARNING):
            b = HealthBreaker(SETTINGS, state_dir=StateDir(tmp_path), now=T0)
        assert b.state == "closed", key
        json.dumps(b.snapshot(), allow_nan=False)
    last = {"from": "closed", "to": "open", "reason": "x", "at": float(bad)}
    _write_breaker(tmp_path / "breaker.json", last_transition=last)
    assert StateDir(tmp_path).load_breaker(T0) is None
    (tmp_path / "pause.json").write_text(f'{{"reason": "r", "since": {T0}, "until": {bad}}}')
    assert StateDir(tmp_path).load_pause(T0) is None
    assert "resetting it" in caplog.text


def test_a_pause_starting_in_the_future_is_kept_from_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "pause.json").write_text(json.dumps({"reason": "r", "since": T0 + 86400}))
    with caplog.at_level(logging.WARNING):
        b = HealthBreaker(SETTINGS, state_dir=StateDir(tmp_path), now=T0)
    assert b.state == "forced_open" and b.since == T0
    assert "in the future" in caplog.text


# -- metrics wiring ------------------------------------------------------------------


def _metrics_of(health: Health) -> CollectorRegistry:
    """A registry the transition effects of `health` write to."""
    registry = CollectorRegistry()
    effects = TransitionEffects(
        metrics=Metrics(registry),
        logger=logging.getLogger("test"),
        environ={},
        actions=DEFAULTS.actions,
    )
    effects.attach(health)
    return registry


def test_transition_effects_mirror_state() -> None:
    health = Health.from_config(DEFAULTS, clock=FakeClock(T0))
    registry = _metrics_of(health)
    b = health.breaker

    assert sample(registry, "cdpmon_breaker_transitions_total", to="open") == 0
    b.record(True, T0)
    assert sample(registry, "cdpmon_breaker_state", state="open") == 1
    assert sample(registry, "cdpmon_breaker_state", state="closed") == 0
    assert sample(registry, "cdpmon_breaker_transitions_total", to="open") == 1
    b.pause(T0 + 1)
    assert sample(registry, "cdpmon_paused") == 1
    assert sample(registry, "cdpmon_breaker_state", state="forced_open") == 1
    b.resume(T0 + 2)
    assert sample(registry, "cdpmon_paused") == 0
    assert sample(registry, "cdpmon_breaker_state", state="closed") == 1
    assert sample(registry, "cdpmon_breaker_transitions_total", to="closed") == 1


def test_transition_effects_reflect_restored_pause(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    HealthBreaker(SETTINGS, state_dir=sd, now=T0).pause(T0, reason="x")
    registry = _metrics_of(Health.from_config(DEFAULTS, clock=FakeClock(T0 + 1), state_dir=sd))
    assert sample(registry, "cdpmon_paused") == 1
    assert sample(registry, "cdpmon_breaker_state", state="forced_open") == 1
