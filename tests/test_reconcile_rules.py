"""The deletion rules of DESIGN 7b (monitor/reconcile/rules.py) through `plan`: what CDP
keeps stays, what died with CDP goes once its time has passed, what is in flight stays,
emergency or not; stay-active and legacy channels; the operator's adoption of old leaks."""

from __future__ import annotations

from monitor.config import CdpConfig
from monitor.ledger import RequestLedger
from monitor.reconcile import plan
from monitor.reconcile.rules import Activity, stay_active_since
from monitor.reconcile.triggers import next_trigger, restart_due
from tests.helpers.reconcile import HOUR, MIN, NOW, cfg, chan, ids, why_of

NEVER = CdpConfig(auto_delete="never")
LIFETIME = CdpConfig().request_lifetime  # 3 x 60 s + 5 m
SONYFLAKE_EPOCH = 1_672_531_200.0


def sonyflake(at: float) -> int:
    return int((at - SONYFLAKE_EPOCH) * 100) << 24 | 7


def ledger_with(*entries: tuple[str, str, float]) -> RequestLedger:
    ledger = RequestLedger(state_dir=None)
    for rid, state, at in entries:
        ledger.opened(rid, at)
        if state == "completed":
            ledger.completed(rid, at + 1)
        elif state == "failed":
            ledger.failed(rid, at + 1)
    return ledger


def test_auto_delete_never_keeps_completed_conversations() -> None:
    ledger = ledger_with(("done1", "completed", NOW - 3 * HOUR), ("done2", "completed", NOW - HOUR))
    kept = chan(3 * HOUR, "cdp-chat-done1", last_msg_age=3 * HOUR)
    twin = chan(HOUR, "cdp-chat-done2")  # an abandoned attempt's empty same-named channel
    also = chan(HOUR, "cdp-chat-done2", last_msg_age=HOUR)
    unknown = chan(2 * HOUR, "cdp-chat-20240101000000nomonitor", last_msg_age=2 * HOUR)
    chans = [kept, twin, also, unknown]
    stale = cfg(stale_after=60.0)
    never = plan(chans, ledger.snapshot(), stale, NOW, guild_limit=500, cdp=NEVER)
    assert ids(never.actions) == [twin["id"]]
    assert "never deletes" in why_of(never, kept["id"])
    assert "never deletes" in why_of(never, unknown["id"])
    # With CDP's default (5 s) the same channels are overdue leaks.
    default = plan(chans, ledger.snapshot(), stale, NOW, guild_limit=500)
    assert sorted(ids(default.actions)) == sorted(c["id"] for c in chans)


def test_request_that_died_with_cdp_goes_once_its_time_has_passed() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("live", NOW - 2 * MIN)
    ledger.opened("gone", NOW - LIFETIME - 10)
    assert ledger.cdp_restarted(NOW - MIN) == 2
    ledger.opened("after", NOW - 30)  # the new process's request: alive
    live = chan(2 * MIN, "cdp-chat-live", last_msg_age=MIN)
    gone = chan(LIFETIME + 10, "cdp-chat-gone", last_msg_age=LIFETIME)
    after = chan(30, "cdp-chat-after")
    p = plan([live, gone, after], ledger.snapshot(), cfg(), NOW, guild_limit=500)
    assert ids(p.actions) == [gone["id"]] and p.actions[0].reason == "cdp_restart"
    assert "died with CDP" in why_of(p, live["id"])
    assert "still open" in why_of(p, after["id"])
    later = plan([live, after], ledger.snapshot(), cfg(), NOW + LIFETIME, guild_limit=500)
    assert ids(later.actions) == [live["id"]]
    # CDP that never deletes would have kept the conversation: so do we (an empty one goes).
    empty = chan(LIFETIME + 10, "cdp-chat-gone")
    never = plan([gone, empty], ledger.snapshot(), cfg(), NOW, guild_limit=500, cdp=NEVER)
    assert ids(never.actions) == [empty["id"]] and "never deletes" in why_of(never, gone["id"])
    # A request the gate saw finish after all is the operator's again (auto_delete never).
    ledger.completed("live", NOW)
    kept = plan([live], ledger.snapshot(), cfg(), NOW + LIFETIME, guild_limit=500, cdp=NEVER)
    assert kept.actions == ()


def test_channels_unknown_to_the_ledger_after_a_restart() -> None:
    # Non-stream requests in flight when CDP died got a 502 and no X-Request-Id: only the
    # restart says their channels' delete timers are gone.
    ledger = RequestLedger(state_dir=None)
    before = chan(LIFETIME + MIN, "cdp-chat-20240101000000123aaaaaaaa", last_msg_age=LIFETIME)
    young = chan(2 * MIN, "cdp-chat-20240101000000123bbbbbbbb", last_msg_age=MIN)
    ledger.cdp_restarted(NOW - MIN)
    newer = chan(30, "cdp-chat-20240101000000123cccccccc", last_msg_age=10)
    # A client's own channel (POST /api/channel/create): CDP never had a timer for it.
    theirs = chan(LIFETIME + MIN, "cdp-chat-support", last_msg_age=LIFETIME)
    chans = [before, young, newer, theirs]
    p = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=500)
    assert ids(p.actions) == [before["id"]] and p.actions[0].reason == "cdp_restart"
    assert all(s.unjudged for s in p.skipped)  # kept, with messages: reported
    # Without a restart nothing judges them; with auto_delete never they are the user's.
    assert plan(chans, None, cfg(), NOW, guild_limit=500).actions == ()
    assert plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=500, cdp=NEVER).actions == ()


def test_in_flight_is_never_deleted_even_in_an_emergency() -> None:
    ledger = ledger_with(("open1", "open", NOW - 4 * MIN))
    filler = [chan(HOUR, "general", cid=None) for _ in range(8)]
    stream = chan(4 * MIN, "cdp-chat-open1")  # open: even empty (CDP answers first)
    slow_post = chan(5 * MIN, "cdp-chat-20240101000000slowpost")  # empty: prompt not posted
    chans = [stream, slow_post, *filler]
    for activity in (Activity(inflight_creates=3), Activity(), None):
        p = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=10, activity=activity)
        assert p.emergency and p.actions == ()
    # Nothing in flight at the gate: the empty one is over; the open request still is not.
    idle = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=10, activity=Activity(0))
    assert ids(idle.actions) == [slow_post["id"]]
    # Or CDP restarted since it was made.
    ledger.cdp_restarted(NOW - MIN)
    restarted = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=10, activity=Activity(3))
    assert ids(restarted.actions) == [slow_post["id"]]
    assert "died with CDP" in why_of(restarted, stream["id"])


def test_an_empty_channel_born_after_a_create_still_unnamed_at_the_gate_is_kept() -> None:
    # The gate forwarded a create 20 min ago and CDP has not answered (no request id
    # yet): a channel born since may be its channel, prompt not posted; one born before
    # (beyond the clock slack) cannot be.
    older = chan(30 * MIN, "cdp-chat-20240101000000123aaaaaaaa")
    newer = chan(15 * MIN, "cdp-chat-20240101000000123bbbbbbbb")
    activity = Activity(inflight_creates=1, unnamed_creates_since=NOW - 20 * MIN)
    for limit in (500, 3):  # with and without an emergency
        p = plan([older, newer], None, cfg(), NOW, guild_limit=limit, activity=activity)
        assert ids(p.actions) == [older["id"]]
        assert "born after a create" in why_of(p, newer["id"])
    # Once CDP answers (the ledger knows the id) or the create ends, min_age rules again.
    p = plan([older, newer], None, cfg(), NOW, guild_limit=500, activity=Activity(0))
    assert sorted(ids(p.actions)) == sorted([older["id"], newer["id"]])


def test_stay_active_channels_are_protected_until_their_task_is_over() -> None:
    made = NOW - 5 * MIN
    name = f"cdp-chat-{sonyflake(made)}"
    assert stay_active_since(name, made + 2) is not None
    assert stay_active_since(name, made - 2 * HOUR) is None  # not its time: not the task's
    assert stay_active_since("cdp-chat-20240101000000123456789", made) is None
    young = chan(5 * MIN, name, last_msg_age=4 * MIN)
    p = plan([young], None, cfg(stale_after=60.0), NOW, guild_limit=500)
    assert p.actions == () and "stay-active" in why_of(p, young["id"])
    old_name = f"cdp-chat-{sonyflake(NOW - LIFETIME - MIN)}"
    left = chan(LIFETIME + MIN, old_name, last_msg_age=LIFETIME)
    p = plan([left], None, cfg(), NOW, guild_limit=500, cdp=NEVER)
    assert [a.reason for a in p.actions] == ["stay_active"]


def test_legacy_names_are_reconciled() -> None:
    rid = "202402081340135422918704mmjhbyu"
    old = chan(HOUR, f"cdp-对话{rid}")
    oldest = chan(HOUR, f"对话{rid}")
    theirs = chan(HOUR, "对话区")  # a server's own channel
    p = plan([old, oldest, theirs], None, cfg(), NOW, guild_limit=500)
    assert sorted(ids(p.actions)) == sorted([old["id"], oldest["id"]])
    assert p.not_matching == 1


def test_adopt_older_than_takes_only_what_no_rule_judges() -> None:
    ledger = ledger_with(("done", "completed", NOW - 30 * 86400.0))
    ancient = chan(30 * 86400.0, "cdp-chat-20230101000000ancient1", last_msg_age=29 * 86400.0)
    recent = chan(30 * 86400.0, "cdp-chat-20230101000000recent11", last_msg_age=HOUR)
    kept = chan(30 * 86400.0, "cdp-chat-done", last_msg_age=29 * 86400.0)
    chans = [ancient, recent, kept]
    p = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=500, cdp=NEVER)
    assert p.actions == () and len(p.unjudged) == 2
    adopt = Activity(adopt_older_than=7 * 86400.0)
    p = plan(chans, ledger.snapshot(), cfg(), NOW, guild_limit=500, cdp=NEVER, activity=adopt)
    assert ids(p.actions) == [ancient["id"]] and p.actions[0].reason == "adopted"


def test_a_run_follows_a_restart_once_the_dead_requests_are_over() -> None:
    due = restart_due([NOW - 2 * HOUR, NOW], LIFETIME)
    assert due == NOW + LIFETIME + 1.0 and restart_due([], LIFETIME) is None
    settings = cfg(interval=HOUR)

    def trigger(now: float, last_run_at: float) -> str | None:
        return next_trigger(
            now,
            breaker_state="closed",
            closed_since=None,
            last_run_at=last_run_at,
            last_census=None,
            settings=settings,
            restart_due=due,
        )

    assert trigger(due - 1, NOW + 10) is None
    assert trigger(due, NOW + 10) == "cdp_restart"
    assert trigger(due + 5, due + 1) is None  # that run happened
