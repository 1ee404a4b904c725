"""The reconciler's pure planner and re-check."""

from __future__ import annotations

import random
from typing import Any

import pytest

from monitor.discord.snowflake import make_snowflake
from monitor.ledger import RequestLedger
from monitor.reconcile import Action, plan, recheck
from tests.helpers.reconcile import GUILD, HOUR, MIN, NOW, cfg, chan, ids, sf, why_of

# -- the planner -----------------------------------------------------------------------------


def test_empty_aged_deletes_only_old_empty_channels() -> None:
    old, young, with_msg = chan(11 * MIN), chan(9 * MIN), chan(HOUR, last_msg_age=HOUR)
    p = plan([old, young, with_msg], None, cfg(), NOW, guild_limit=500)
    assert ids(p.actions) == [old["id"]]
    assert p.actions[0].reason == "empty_aged"
    assert "only 9m old" in why_of(p, young["id"])
    assert "has messages" in why_of(p, with_msg["id"])
    assert not p.emergency and p.min_age == 600


def test_ledger_completed_waits_for_cdp_and_the_grace() -> None:
    ledger = RequestLedger(state_dir=None)
    done_long_ago, done_just_now = chan(30, "cdp-chat-aaa"), chan(30, "cdp-chat-bbb")
    ledger.opened("AAA", NOW - 400)
    ledger.completed("AAA", NOW - 126)  # > cdp_auto_delete 5s + ledger_grace 120s
    ledger.opened("bbb", NOW - 400)
    ledger.completed("bbb", NOW - 124)
    p = plan([done_long_ago, done_just_now], ledger.snapshot(), cfg(), NOW, guild_limit=500)
    assert [(str(a.channel_id), a.reason, a.request_id) for a in p.actions] == [
        (done_long_ago["id"], "ledger_completed", "aaa")
    ]
    assert "CDP deletes it itself" in why_of(p, done_just_now["id"])


def test_ledger_failed_deletes_regardless_of_age_and_messages() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("late1", NOW - 1)
    ledger.failed("late2", NOW - 1)
    brand_new = chan(0, "cdp-chat-late1")
    with_msgs = chan(1, "cdp-对话late2", last_msg_age=0)  # the v4.0.8-v4.4.2 name
    legacy = cfg(name_pattern=r"^cdp-(chat-|对话)")
    p = plan([brand_new, with_msgs], ledger.snapshot(), legacy, NOW, guild_limit=500)
    assert sorted(ids(p.actions)) == sorted([brand_new["id"], with_msgs["id"]])
    assert {a.reason for a in p.actions} == {"ledger_failed"}


def test_ledger_failed_still_needs_a_match_and_no_protection() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("x1", NOW)
    ledger.failed("x2", NOW)
    protected = chan(0, "cdp-chat-x1")
    custom = cfg(
        name_pattern="^cdp-chat-",
        protected_channel_ids=frozenset({int(protected["id"])}),
    )
    old_prefix = chan(0, "cdp-对话x2")  # the ledger knows it, the custom pattern does not
    p = plan([protected, old_prefix], ledger.snapshot(), custom, NOW, guild_limit=500)
    assert p.actions == ()
    assert why_of(p, protected["id"]) == "protected id"
    assert p.not_matching == 1


def test_open_request_is_never_deleted() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("busy", NOW - 3 * HOUR)
    old_empty = chan(3 * HOUR, "cdp-chat-busy")
    s = cfg(stale_after=HOUR)
    p = plan([old_empty], ledger.snapshot(), s, NOW, guild_limit=500)
    assert p.actions == ()
    assert "still open" in why_of(p, old_empty["id"])
    # Even in an emergency.
    p = plan([old_empty], ledger.snapshot(), s, NOW, guild_limit=1)
    assert p.emergency and p.actions == ()


def test_stale_only_when_configured_and_older_than_min_age() -> None:
    idle = chan(3 * HOUR, last_msg_age=2 * HOUR)
    busy = chan(3 * HOUR, last_msg_age=10 * MIN)
    p = plan([idle, busy], None, cfg(), NOW, guild_limit=500)
    assert p.actions == ()
    # Idle longer than min_age: reported as stale, but kept without stale_after.
    assert (p.census.stale, p.census.active) == (1, 1)
    p = plan([idle, busy], None, cfg(stale_after=HOUR), NOW, guild_limit=500)
    assert [(str(a.channel_id), a.reason) for a in p.actions] == [(idle["id"], "stale")]
    # A stale_after below min_age does not delete channels younger than min_age.
    young_idle = chan(5 * MIN, last_msg_age=4 * MIN)
    p = plan([young_idle], None, cfg(stale_after=MIN), NOW, guild_limit=500)
    assert p.actions == ()


@pytest.mark.parametrize(
    ("type_", "label"),
    [(2, "voice"), (4, "category"), (5, "announcement"), (11, "thread"), (13, "stage"),
     (15, "forum"), (99, "unknown")],
)  # fmt: skip
def test_non_text_types_are_never_deleted(type_: int, label: str) -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("t1", NOW)
    c = chan(30 * 86_400.0, "cdp-chat-t1", type_=type_)
    c["last_message_id"] = None
    p = plan([c], ledger.snapshot(), cfg(stale_after=MIN), NOW, guild_limit=1)
    assert p.actions == (), label
    assert why_of(p, c["id"]) == f"type {type_} is not a text channel"


@pytest.mark.parametrize(
    "name",
    ["general", "x-cdp-chat-1", "cdp-chatter-1", "cdpchat-1", "cdp-chat", " cdp-chat-1",
     "CDP-CHAT-1", "cdp-talk-1"],
)  # fmt: skip
def test_names_that_do_not_match_are_never_deleted(name: str) -> None:
    c = chan(30 * 86_400.0, name)
    p = plan([c], None, cfg(stale_after=MIN), NOW, guild_limit=1)
    assert p.actions == ()
    assert p.not_matching == 1


def test_protected_ids_are_never_deleted() -> None:
    c = chan(30 * 86_400.0)
    p = plan(
        [c],
        None,
        cfg(protected_channel_ids=frozenset({int(c["id"])})),
        NOW,
        guild_limit=1,
    )
    assert p.actions == ()
    assert why_of(p, c["id"]) == "protected id"


def test_high_watermark_switches_to_emergency_min_age() -> None:
    five_min = chan(5 * MIN)
    one_min = chan(1 * MIN)
    filler = [chan(HOUR, "general", cid=None) for _ in range(398)]
    calm = plan([five_min, one_min, *filler], None, cfg(), NOW, guild_limit=500)  # 400 = 80%
    assert calm.emergency and ids(calm.actions) == [five_min["id"]]
    below = plan([five_min, one_min, *filler[:-1]], None, cfg(), NOW, guild_limit=500)
    assert not below.emergency and below.actions == ()
    assert below.census.above_watermark is False and calm.census.above_watermark is True


def test_oldest_first_and_capped() -> None:
    chans = [chan(HOUR + i * MIN) for i in range(10)]
    random.Random(3).shuffle(chans)
    p = plan(chans, None, cfg(max_deletes_per_run=3), NOW, guild_limit=500)
    oldest = sorted(chans, key=lambda c: int(c["id"]))[:3]
    assert ids(p.actions) == [c["id"] for c in oldest]
    assert p.deferred == 7
    assert sum("over max_deletes_per_run (3)" in s.why for s in p.skipped) == 7
    assert p.census.leaked == 10  # the census counts all of them


def test_bad_listing_entries_are_skipped_not_fatal() -> None:
    good = chan(HOUR)
    bad_last = chan(HOUR)
    bad_last["last_message_id"] = "soon"
    other_guild = chan(HOUR)
    other_guild["guild_id"] = "42"
    entries: list[Any] = [
        "a string",
        None,
        {"type": 0, "name": "cdp-chat-noid", "last_message_id": None},
        {"id": "12ab", "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": True, "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": "-5", "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(2**64), "type": 0, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": "0", "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": None, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": False, "name": "cdp-chat-x", "last_message_id": None},
        {"id": str(sf(HOUR)), "type": 0, "name": 7, "last_message_id": None},
        {"id": str(sf(HOUR)), "type": 0, "last_message_id": None},
        bad_last,
        other_guild,
        good,
        dict(good),  # listed twice
    ]
    p = plan(entries, None, cfg(), NOW, guild_limit=500, guild_id=GUILD)
    assert ids(p.actions) == [good["id"]]
    whys = [s.why for s in p.skipped]
    assert len(whys) == len(entries) - 1
    for needle in (
        "not an object",
        "missing or invalid id",
        "unknown channel type",
        "name is not a string",
        "invalid last_message_id",
        "another guild",
        "listed twice",
    ):
        assert any(needle in w for w in whys), needle


def test_census_states() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("open1", NOW)
    chans = [
        chan(HOUR, "cdp-chat-open1"),  # active: open request
        chan(MIN, last_msg_age=MIN),  # active: recent message
        chan(MIN),  # empty: young
        chan(2 * HOUR, last_msg_age=HOUR),  # stale: idle, kept (no stale_after)
        chan(HOUR),  # leaked
        chan(HOUR, "general"),
        chan(HOUR, "cdp-chat-cat", type_=4),
    ]
    c = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=10).census
    assert (c.active, c.empty, c.stale, c.leaked) == (2, 1, 1, 1)
    assert c.channels == 7 and c.limit == 10 and c.usage == pytest.approx(0.7)
    assert c.as_dict()["temp"] == {"active": 2, "empty": 1, "stale": 1, "leaked": 1}


# -- the re-check ------------------------------------------------------------------------------


def _action_for(c: dict[str, Any], **kw: Any) -> Action:
    p = plan([c], kw.pop("ledger", None), cfg(**kw), NOW, guild_limit=500)
    assert len(p.actions) == 1
    return p.actions[0]


def test_recheck_accepts_an_unchanged_channel() -> None:
    c = chan(HOUR)
    a = _action_for(c)
    assert recheck(a, dict(c), None, cfg(), NOW + 5, min_age=600) == ("empty_aged", "")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"last_message_id": str(make_snowflake(NOW))}, "a message arrived"),
        ({"name": "cdp-chat-renamed"}, "renamed"),
        ({"name": "general"}, "renamed"),
        ({"type": 2}, "type changed"),
        ({"id": "123"}, "another channel"),
        ({"type": "text"}, "unexpected answer"),
    ],
)
def test_recheck_keeps_a_changed_channel(change: dict[str, Any], why: str) -> None:
    c = chan(HOUR)
    a = _action_for(c)
    reason, text = recheck(a, {**c, **change}, None, cfg(), NOW, min_age=600)
    assert reason is None and why in text


def test_recheck_reads_the_live_ledger() -> None:
    ledger = RequestLedger(state_dir=None)
    c = chan(HOUR, "cdp-chat-r9")
    a = _action_for(c)
    ledger.opened("r9", NOW)  # the request started between plan and delete
    reason, text = recheck(a, c, ledger, cfg(), NOW, min_age=600)
    assert reason is None and "still open" in text


def test_recheck_with_a_message_keeps_even_a_failed_request() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.failed("f1", NOW)
    c = chan(MIN, "cdp-chat-f1")
    a = _action_for(c, ledger=ledger.snapshot())
    fresh = {**c, "last_message_id": str(make_snowflake(NOW))}
    assert recheck(a, fresh, ledger, cfg(), NOW, min_age=600)[0] is None
