"""The health owner: the pure judgement with its half-open rule, the evaluation loop's
liveness (fail-open), admission answers, waiting for a change, status."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from monitor.clock import ManualClock
from monitor.config import parse_config
from monitor.health.owner import Health, judge
from monitor.health.window import Sample, window_settings

DEFAULTS = parse_config("discord: {token: t0ken, guild_id: 1}")
SETTINGS = window_settings(DEFAULTS.health, DEFAULTS.probes)
T0 = 1_700_000_000.0


def test_judge_a_half_open_trial_only_on_samples_since_it_began() -> None:
    outage = [Sample("gateway", T0 + i, False, 0.1) for i in range(5)]
    recovered = [Sample("gateway", T0 + 60 + i, True, 0.1) for i in range(4)]
    now = T0 + 64
    assert judge(outage + recovered, now, SETTINGS, half_open_since=None).unstable
    trial = judge(outage + recovered, now, SETTINGS, half_open_since=T0 + 60)
    assert not trial.unstable and trial.sample_count == 4


def test_evaluate_applies_the_half_open_rule() -> None:
    clock = ManualClock(T0)
    health = Health.from_config(DEFAULTS, clock=clock)
    health.add_sample(Sample("rest", T0 - 1, True, 0.1))  # Discord reached once
    for i in range(5):
        health.add_sample(Sample("gateway", T0 + i, False, 0.1))
    assert health.evaluate(T0 + 5).unstable
    assert health.breaker.state == "open"
    # The open period (60 s) is over: half-open from the first look after it.
    assert health.breaker_state(T0 + 65) == ("half_open", T0 + 65)
    for i in range(3):
        health.add_sample(Sample("rest", T0 + 66 + i, True, 0.1))
    # The trial is judged on the three healthy samples since, not the outage's five.
    verdict = health.evaluate(T0 + 70)
    assert not verdict.unstable and verdict.sample_count == 3
    assert health.verdict is verdict and health.last_evaluation == T0 + 70


async def test_machinery_ok_follows_the_evaluation_loop() -> None:
    clock = ManualClock(T0)
    health = Health.from_config(DEFAULTS, clock=clock)
    assert health.machinery_ok(T0)  # not started
    loop = asyncio.create_task(health.run())
    await asyncio.sleep(0)
    assert health.last_evaluation == T0 and health.machinery_ok(T0 + 15)
    assert not health.machinery_ok(T0 + 16)  # stale: over 3 evaluate intervals
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert not health.machinery_ok(T0)  # started and stopped


def test_admit_create_says_why_not() -> None:
    health = Health.from_config(DEFAULTS, clock=ManualClock(T0))
    assert health.admit_create(T0).admitted
    health.pause(T0, 600, "maintenance")
    refused = health.admit_create(T0 + 1)
    assert (refused.admitted, refused.state, refused.pause_reason) == (
        False,
        "forced_open",
        "maintenance",
    )
    assert refused.retry_after == 599
    assert health.breaker_state(T0 + 2) == ("forced_open", T0)


async def test_wait_change_returns_on_a_transition() -> None:
    clock = ManualClock(T0)
    health = Health.from_config(DEFAULTS, clock=clock)
    waiter = asyncio.create_task(health.wait_change(30))
    await asyncio.sleep(0)
    assert not waiter.done()
    health.pause(T0, None, "x")
    await waiter
    assert clock.sleeps == [30]


def test_reconfigure_takes_health_breaker_and_slow_settings() -> None:
    health = Health.from_config(DEFAULTS, clock=ManualClock(T0))
    new = parse_config(
        "discord: {token: t0ken, guild_id: 1}\n"
        "health: {min_samples: 7, evaluate_interval: 2s}\n"
        "breaker: {reset_timeout: 5s}\n"
        "probes: {gateway: {slow: 3s}}\n"
        "gate: {half_open_trials: 4}\n"
    )
    health.reconfigure(new)
    assert health.settings == replace(
        SETTINGS, min_samples=7, slow_thresholds={"gateway": 3.0, "rest": 2.0}
    )
    assert health.evaluate_interval == 2.0
    assert health.breaker.settings.reset_timeout == 5.0
    assert health.breaker.settings.half_open_max_trials == 1  # gate.*: fixed at start


def test_status_is_json_ready() -> None:
    health = Health.from_config(DEFAULTS, clock=ManualClock(T0))
    health.evaluate(T0)
    status = health.status(T0)
    json.dumps(status)
    assert set(status) == {"breaker", "paused", "health", "discord_reachable"}
    assert status["breaker"]["state"] == "closed"
    assert status["health"]["conclusive"] is False


def test_discord_never_reached_is_unknown_not_unstable() -> None:
    clock = ManualClock(T0)
    health = Health.from_config(DEFAULTS, clock=clock)
    health.note_unreachable("gateway probe: connect failed in connect: refused")
    for i in range(8):
        health.add_sample(Sample("gateway", T0 + i, False, 0.1))
        health.add_sample(Sample("gate", T0 + i, False, 1.0))  # CDP's view: no reach
    verdict = health.evaluate(T0 + 8)
    assert not verdict.unstable and not verdict.conclusive
    assert verdict.reason.startswith("unknown: Discord not reached since start (gateway probe")
    assert health.breaker.state == "closed" and not health.discord_reached
    assert health.status(T0 + 8)["discord_reachable"]["reason"].startswith("gateway probe")
    # One successful probe: from now on Discord is judged, and the failures count.
    health.add_sample(Sample("rest", T0 + 9, True, 0.1))
    assert health.discord_reached and health.evaluate(T0 + 9).unstable
    assert health.breaker.state == "open"


def test_without_probes_of_its_own_nothing_waits_for_reach() -> None:
    config = parse_config(
        "discord: {token: t0ken, guild_id: 1}\n"
        "probes: {gateway: {enabled: false}, rest: {enabled: false}}"
    )
    assert Health.from_config(config, clock=ManualClock(T0)).discord_reached
