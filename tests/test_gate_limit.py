"""The adaptive create limit (monitor/gate/limit.py): the pure queue model against a
serialised Discord played out here (hypothesis), and the gate's admission using it on a
manual clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor.clock import ManualClock
from monitor.config import parse_config
from monitor.gate.admission import CreateAdmission, Refusal
from monitor.gate.limit import CreateQueue, LimitSettings, predict_wait
from monitor.gate.slots import CreateSlot
from monitor.health.owner import Health
from monitor.health.window import Sample
from monitor.metrics import Metrics
from monitor.wiring import create_limit
from tests.helpers.gate import FakeLive
from tests.helpers.metrics import metric_value

TIMEOUT = 60.0  # CDP's attempt timeout
HEADROOM = 0.25
BUDGET = TIMEOUT * (1 - HEADROOM)


def queue(max_pending: int = 8, window: float = 180.0) -> CreateQueue:
    return CreateQueue(LimitSettings(TIMEOUT, HEADROOM, max_pending, window))


# -- the pure model -------------------------------------------------------------------


def test_prediction_is_the_queue_ahead_times_the_creation_time() -> None:
    # 3 pending, the oldest 4 s into a 10 s creation: 6 s + 3 x 10 s.
    assert predict_wait(3, 100.0, 10.0, 104.0, 0.0) == (36.0, 10.0)
    # A head in service longer than the estimate: Discord is slower now, by as much
    # again as it has already taken: 25 s more for it, 50 s for each behind it.
    assert predict_wait(3, 100.0, 10.0, 125.0, 0.0) == (175.0, 50.0)
    # Nothing pending: its own creation time, plus a known global 429.
    assert predict_wait(0, None, 10.0, 125.0, 5.0) == (15.0, 10.0)


def test_service_time_starts_when_discord_could_start_on_it() -> None:
    q = queue()
    q.admit(0.0)
    q.admit(0.0)
    assert q.completed_one(10.0) == 10.0
    assert q.completed_one(30.0) == 20.0  # waited 10 s behind the first, then 20 s
    q.admit(100.0)
    assert q.completed_one(105.0) == 5.0  # an idle queue: from its own admission
    assert q.per_create(105.0) == 20.0  # the slowest of the recent ones


def test_a_hang_up_is_still_pending_an_answer_is_not_and_the_window_ends_both() -> None:
    q = queue(window=180.0)
    first = q.admit(0.0)
    q.admit(1.0)
    q.ended(first, 2.0)  # CDP answered the first: its creation is over
    assert q.pending == 1
    assert q.verdict(100.0).predicted_wait > 0 and q.pending == 1  # no answer, no channel
    q.verdict(181.1)
    assert q.pending == 0  # CDP gave up on it after its 3 attempts


def test_the_limit_admits_while_the_predicted_wait_fits_and_says_when_to_retry() -> None:
    q = queue()
    q.admit(0.0)
    q.completed_one(20.0)  # Discord takes 20 s a channel: 2 fit in 45 s
    q.admit(20.0)
    v = q.verdict(20.0)
    assert v.admit and v.predicted_wait == 40.0 and v.limit == 2
    q.admit(20.0)
    v = q.verdict(20.0)
    assert not v.admit and v.predicted_wait == 60.0 and v.retry_after == 15.0
    assert q.verdict(35.0).admit  # the head is 15 s in: 5 + 2 x 20 = 45 s


def test_a_discord_too_slow_for_one_create_gets_a_trial_once_that_is_old() -> None:
    q = queue(window=180.0)
    q.admit(0.0)
    q.completed_one(50.0)  # 50 s a channel: one alone would pass the 45 s budget
    v = q.verdict(60.0)
    assert not v.admit and v.limit == 0
    assert v.retry_after == 170.0  # when the measurement is forgotten
    assert q.verdict(230.0).admit  # a trial: its answer is a fresh measurement


def test_a_global_429_counts_as_a_known_wait() -> None:
    q = queue()
    q.admit(0.0)
    q.completed_one(1.0)
    assert q.verdict(2.0, blocked=30.0).admit
    v = q.verdict(2.0, blocked=50.0)
    # 50 s of block and 1 s of creation against a 45 s budget: none fits for 6 s.
    assert not v.admit and v.retry_after == 6.0 and v.limit == 0


@dataclass
class Discord:
    """Serialised creation (discordgo's bucket lock): each create's service time is
    the latency at the moment Discord starts on it."""

    latency: Callable[[float], float]
    free_at: float = 0.0

    def serve(self, admitted: float) -> float:
        start = max(admitted, self.free_at)
        self.free_at = start + self.latency(start)
        return self.free_at


def play(q: CreateQueue, discord: Discord, arrivals: list[float]) -> list[tuple[float, float]]:
    """Arrivals in time order against the model, completions reported as they happen;
    a refused create is dropped. Returns (admitted at, channel at) per admitted create."""
    done: list[float] = []  # completion times still to report, in order
    admitted: list[tuple[float, float]] = []
    for t in sorted(arrivals):
        while done and done[0] <= t:
            q.completed_one(done.pop(0))
        verdict = q.verdict(t)
        if verdict.admit:
            assert verdict.predicted_wait <= q.settings.budget + 1e-9
            q.admit(t)
            finished = discord.serve(t)
            done.append(finished)
            admitted.append((t, finished))
    return admitted


# Bursts (several requests at one moment, as clients retrying together send them) at
# any times: the boundary cases are a burst arriving while the head is mid-creation.
arrival_lists = st.lists(
    st.tuples(st.floats(0, 600, allow_nan=False), st.integers(1, 12)), min_size=1, max_size=40
).map(lambda bursts: [t for t, n in bursts for _ in range(n)])


@settings(max_examples=300, deadline=None)
@given(
    arrivals=arrival_lists,
    steps=st.lists(st.floats(0.05, 40, allow_nan=False), min_size=1, max_size=30),
    period=st.floats(5, 120, allow_nan=False),
)
def test_no_admitted_create_is_predicted_past_the_budget(
    arrivals: list[float], steps: list[float], period: float
) -> None:
    # Any latency series (stepping every `period` seconds) and any arrival pattern.
    def latency(t: float) -> float:
        return steps[int(t // period) % len(steps)]

    q = queue(max_pending=1000, window=0)
    play(q, Discord(latency), arrivals)  # the assertion is inside, at each admission


@settings(max_examples=300, deadline=None)
@given(arrivals=arrival_lists, latency=st.floats(0.05, BUDGET / 2, allow_nan=False))
def test_at_a_steady_latency_no_admitted_create_waits_past_the_budget(
    arrivals: list[float], latency: float
) -> None:
    # Once one creation has been measured, the prediction is the truth: no attempt that
    # the limit let in can reach CDP's timeout, however the requests arrive.
    q = queue(max_pending=1000, window=0)
    q.admit(-1000.0)
    q.completed_one(-1000.0 + latency)
    for admitted, finished in play(q, Discord(lambda _: latency), arrivals):
        assert finished - admitted <= BUDGET + 1e-6


@settings(max_examples=200, deadline=None)
@given(latency=st.floats(0.001, BUDGET / 30, allow_nan=False))
def test_a_healthy_discord_is_never_limited(latency: float) -> None:
    q = queue(max_pending=30)
    q.admit(0.0)
    q.completed_one(latency)
    for _ in range(30):  # 30 at once
        assert q.verdict(1.0).admit
        q.admit(1.0)


# -- the gate's admission -------------------------------------------------------------


def admission(
    clock: ManualClock, gate: str = "", cdp: str = "create_attempt_timeout: 60s"
) -> tuple[Health, CreateAdmission, FakeLive, Metrics]:
    config = parse_config(
        f"discord: {{token: t0ken, guild_id: 1}}\ngate: {{{gate}}}\ncdp: {{{cdp}}}\n"
    )
    health = Health.from_config(config, clock=clock)
    health.add_sample(Sample("rest", clock.time(), True))
    metrics = Metrics(CollectorRegistry())
    adm = CreateAdmission(
        config.gate,
        health=health,
        metrics=metrics,
        clock=clock,
        logger=logging.getLogger("test.gate.limit"),
        create_window=config.cdp.creation_window,
        limit=create_limit(config),
    )
    events = FakeLive()
    adm.pending.attach(events)
    return health, adm, events, metrics


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def slot_of(adm: CreateAdmission) -> CreateSlot:
    got = await adm.acquire()
    assert isinstance(got, CreateSlot)
    return got


async def slow_discord(clock: ManualClock, adm: CreateAdmission, events: FakeLive) -> None:
    """One create measured at 20 s a channel: two fit in CDP's 45 s budget."""
    await slot_of(adm)
    clock.advance(20)
    events.created()


async def two_pending_and_a_third(
    clock: ManualClock, adm: CreateAdmission, events: FakeLive
) -> asyncio.Future[CreateSlot | Refusal]:
    """Discord measured at 20 s a channel, two creates pending, a third asking."""
    await slow_discord(clock, adm, events)
    await slot_of(adm)
    await slot_of(adm)
    third = asyncio.ensure_future(adm.acquire())
    await settle()
    return third


async def test_a_create_past_the_limit_waits_for_a_channel_then_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="test.gate.limit")
    clock = ManualClock()
    _, adm, events, metrics = admission(clock)
    await slow_discord(clock, adm, events)
    await slot_of(adm)
    await slot_of(adm)  # 2 pending: a third would wait 60 s
    third = asyncio.ensure_future(adm.acquire())
    await settle()
    assert not third.done() and adm.waiting == 1
    clock.advance(20)  # not yet: the head is just finishing
    await settle()
    events.created()  # one done: 20 + 20 < 45
    assert isinstance(await third, CreateSlot)
    assert metric_value(metrics.gate_create_limit) == 2
    assert metric_value(metrics.gate_creates, stage="admitted") == 4
    assert metric_value(metrics.gate_creates, stage="completed") == 2
    # Once, when it fell from 8: why, in the operator's terms.
    lines = [r.getMessage() for r in caplog.records if "create limit" in r.getMessage()]
    assert lines == [
        "create limit 8 -> 2: Discord takes 20.0s per channel, CDP gives up on an attempt "
        "after 60s (25% kept in reserve); pending creates 0"
    ]


async def test_past_the_queue_wait_it_is_refused_with_the_predicted_drain() -> None:
    clock = ManualClock()
    _, adm, events, _ = admission(clock, gate="queue_wait: 5s")
    third = await two_pending_and_a_third(clock, adm, events)
    clock.advance(5)
    refusal = await third
    assert isinstance(refusal, Refusal)
    assert refusal.decision == "limited" and refusal.code == "create_queue_full"
    # Predicted 60 s at the start, 55 s after 5 s of the head's creation: 10 s too many.
    assert refusal.retry_after == 10
    assert "20.0s each" in refusal.message
    assert adm.status()["limit"] == 2 and adm.status()["pending"] == 2


async def test_a_breaker_that_opened_meanwhile_refuses_the_waiting_create() -> None:
    clock = ManualClock()
    health, adm, events, _ = admission(clock)
    third = await two_pending_and_a_third(clock, adm, events)
    health.breaker.record(True, clock.time(), reason="outage")  # opens while it waits
    clock.advance(20)
    events.created()
    refusal = await third
    assert isinstance(refusal, Refusal) and refusal.decision == "refused_unstable"


async def test_without_current_channel_events_the_limit_stands_aside() -> None:
    clock = ManualClock()
    _, adm, events, _ = admission(clock)
    await slow_discord(clock, adm, events)
    events.current = False  # the session is down: completions would go unseen
    for _ in range(5):
        await slot_of(adm)
    status = adm.status()
    assert status["active"] is False and "gateway session" in status["inactive_reason"]


async def test_a_hang_up_does_not_free_its_place_in_cdps_queue() -> None:
    clock = ManualClock()
    _, adm, events, _ = admission(clock)
    await slow_discord(clock, adm, events)
    first = await slot_of(adm)
    second = await slot_of(adm)
    first.release("done")  # the client hung up; CDP's create goes on
    second.release("answer")  # CDP answered this one: its creation is over
    assert adm.queue is not None and adm.queue.pending == 1


async def test_with_the_limit_off_nothing_waits_for_it() -> None:
    clock = ManualClock()
    _, adm, events, _ = admission(clock, gate="adaptive_limit: false")
    third = await two_pending_and_a_third(clock, adm, events)
    assert third.done() and isinstance(third.result(), CreateSlot)
    assert adm.status() == {"enabled": False}


async def test_a_late_channel_of_an_answered_create_is_not_credited_to_the_next() -> None:
    # CDP answered the first create (a 500 after discordgo's 20 s client timeout, say);
    # Discord makes its channel afterwards: the second create is still waiting.
    clock = ManualClock()
    _, adm, events, metrics = admission(clock)
    first = await slot_of(adm)
    await slot_of(adm)
    adm.pending.answered("20261201120000123456789abcdefgh")
    first.release("answer")
    clock.advance(25)
    events.created("cdp-chat-20261201120000123456789abcdefgh")
    assert adm.queue is not None and adm.queue.pending == 1
    assert metric_value(metrics.gate_creates, stage="completed") == 0
    assert adm.pending.status()["late_channels_ignored"] == 1
    events.created("cdp-chat-20261201120000999999999zyxwvuts")  # the second's own channel
    assert adm.queue.pending == 0 and adm.queue.per_create(clock.monotonic()) == 25.0
