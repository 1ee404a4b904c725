"""The gate's request ledger: states, name lookup, bound, expiry, persistence."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.clock import FakeClock
from monitor.ledger import (
    LEDGER_FILE,
    LedgerEntry,
    RequestLedger,
    request_id_from_channel_name,
)
from monitor.state import StateDir

T0 = 1_700_000_000.0


def test_states_and_times() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("a1", T0)
    ledger.opened("b2", T0 + 1)
    ledger.opened("c3", T0 + 2)
    ledger.completed("b2", T0 + 10)
    ledger.failed("c3", T0 + 11)
    assert ledger.get("a1") == LedgerEntry("a1", "open", T0, None)
    assert ledger.get("b2") == LedgerEntry("b2", "completed", T0 + 1, T0 + 10)
    assert ledger.get("c3") == LedgerEntry("c3", "failed", T0 + 2, T0 + 11)
    assert len(ledger) == 3


def test_finishing_an_unknown_request_records_it() -> None:
    # Opened before a restart that lost it, or evicted: the outcome still matters.
    ledger = RequestLedger(state_dir=None)
    ledger.failed("zz9", T0)
    ledger.completed("yy8", T0 + 1)
    assert ledger.get("zz9") == LedgerEntry("zz9", "failed", T0, T0)
    assert ledger.get("yy8") == LedgerEntry("yy8", "completed", T0 + 1, T0 + 1)


def test_empty_request_ids_are_ignored() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("", T0)
    ledger.opened("   ", T0)
    ledger.failed("", T0)
    assert len(ledger) == 0


def test_channel_names_map_to_requests_case_insensitively() -> None:
    ledger = RequestLedger(state_dir=None)
    # CDP's X-Request-Id may be mixed case; Discord stores the channel name lowercased.
    ledger.opened("20240101ABCdef", T0)
    ledger.failed("Old42", T0)
    entry = ledger.lookup_channel_name("cdp-chat-20240101abcdef")
    assert entry is not None and entry.state == "open"
    assert ledger.lookup_channel_name("CDP-CHAT-20240101ABCDEF") == entry
    old = ledger.lookup_channel_name("cdp-对话old42")
    assert old is not None and old.state == "failed"
    assert ledger.lookup_channel_name("cdp-chat-old42") == old
    # Not a CDP name, another request, or no id at all.
    assert ledger.lookup_channel_name("general") is None
    assert ledger.lookup_channel_name("x-cdp-chat-old42") is None
    assert ledger.lookup_channel_name("cdp-chat-other") is None
    assert ledger.lookup_channel_name("cdp-chat-") is None
    assert request_id_from_channel_name("cdp-chat-") is None
    assert request_id_from_channel_name("Cdp-Chat-AB") == "ab"


def test_snapshot_is_frozen_in_time() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("r1", T0)
    snap = ledger.snapshot()
    ledger.failed("r1", T0 + 5)
    ledger.opened("r2", T0 + 6)
    first = snap.lookup_channel_name("cdp-chat-r1")
    assert first is not None and first.state == "open"
    assert snap.lookup_channel_name("cdp-chat-r2") is None
    assert len(snap) == 1
    with pytest.raises(TypeError):
        snap.entries["r3"] = LedgerEntry("r3", "open", T0)  # type: ignore[index]


def test_bounded_oldest_evicted_first() -> None:
    ledger = RequestLedger(state_dir=None, max_entries=3)
    for i in range(5):
        ledger.opened(f"r{i}", T0 + i)
    assert [ledger.get(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]
    # Finishing keeps its place (by opening); reopening makes it the youngest.
    ledger.completed("r2", T0 + 10)
    ledger.opened("r3", T0 + 11)
    ledger.opened("r5", T0 + 12)
    assert ledger.get("r2") is None
    assert {e for e in ("r3", "r4", "r5") if ledger.get(e)} == {"r3", "r4", "r5"}


def test_prune_expires_by_last_change() -> None:
    ledger = RequestLedger(state_dir=None, retention=100.0)
    ledger.opened("old-open", T0)
    ledger.opened("old-finished-late", T0)
    ledger.completed("old-finished-late", T0 + 90)
    ledger.failed("old-failed", T0 + 10)
    ledger.opened("young", T0 + 80)
    removed = ledger.prune(T0 + 150)
    assert removed == 2
    assert ledger.get("old-open") is None
    assert ledger.get("old-failed") is None
    assert ledger.get("old-finished-late") is not None
    assert ledger.get("young") is not None


def test_writes_prune_expired_entries_on_the_way() -> None:
    ledger = RequestLedger(state_dir=None, retention=100.0)
    ledger.opened("ancient", T0)
    ledger.opened("fresh", T0 + 1000)  # far past PRUNE_EVERY: this change prunes
    assert ledger.get("ancient") is None
    assert ledger.get("fresh") is not None


# -- persistence ---------------------------------------------------------------------------


def new_ledger(path: Path, clock: FakeClock, **kw: float) -> RequestLedger:
    return RequestLedger(state_dir=StateDir(path), clock=clock, **kw)  # type: ignore[arg-type]


def file_ids(path: Path) -> dict[str, str]:
    data = json.loads((path / LEDGER_FILE).read_text())
    return {e["request_id"]: e["state"] for e in data["entries"]}


def test_persisted_and_loaded_by_a_new_instance(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    ledger = new_ledger(tmp_path, clock)
    ledger.opened("a", T0)
    ledger.opened("b", T0)
    ledger.completed("b", T0 + 1)
    ledger.failed("c", T0 + 2)
    ledger.flush()
    again = new_ledger(tmp_path, clock)
    assert again.get("a") == LedgerEntry("a", "open", T0, None)
    assert again.get("b") == LedgerEntry("b", "completed", T0, T0 + 1)
    assert again.get("c") == LedgerEntry("c", "failed", T0 + 2, T0 + 2)
    # Order (for eviction) survives too.
    assert list(again.snapshot().entries) == ["a", "b", "c"]


def test_writes_are_throttled_but_failures_are_urgent(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    ledger = new_ledger(tmp_path, clock, flush_interval=5.0, urgent_flush_interval=0.25)
    ledger.opened("a", clock.time())  # the first change is written at once
    assert ledger.writes == 1 and file_ids(tmp_path) == {"a": "open"}
    clock.advance(0.5)
    ledger.opened("b", clock.time())
    ledger.completed("a", clock.time())
    assert ledger.writes == 1  # a busy gate does not rewrite the file per request
    ledger.failed("c", clock.time())  # past the urgent interval: written now
    assert ledger.writes == 2
    assert file_ids(tmp_path) == {"a": "completed", "b": "open", "c": "failed"}
    clock.advance(0.1)
    ledger.failed("d", clock.time())  # within the urgent interval: coalesced
    assert ledger.writes == 2
    clock.advance(0.2)
    ledger.failed("e", clock.time())
    assert ledger.writes == 3
    assert set(file_ids(tmp_path)) == {"a", "b", "c", "d", "e"}
    clock.advance(1.0)
    ledger.opened("f", clock.time())
    assert ledger.writes == 3
    clock.advance(5.0)
    ledger.opened("g", clock.time())
    assert ledger.writes == 4


def test_flush_writes_only_pending_changes(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    ledger = new_ledger(tmp_path, clock)
    ledger.flush()
    assert ledger.writes == 0 and not (tmp_path / LEDGER_FILE).exists()
    ledger.opened("a", T0)
    ledger.opened("b", T0)
    assert ledger.writes == 1
    ledger.flush()
    assert ledger.writes == 2 and set(file_ids(tmp_path)) == {"a", "b"}
    ledger.flush()
    assert ledger.writes == 2


async def test_throttled_change_is_written_by_a_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without another change, a throttled change still reaches disk: a loop timer writes
    it when due, and a failure pulls the timer in."""
    loop = asyncio.get_running_loop()
    scheduled: list[tuple[float, Callable[[], None], asyncio.TimerHandle]] = []
    real_call_later = loop.call_later

    def capture(delay: float, callback: Callable[[], None], *args: object) -> asyncio.TimerHandle:
        handle = real_call_later(3600, callback)  # never fires by itself: the test fires it
        scheduled.append((delay, callback, handle))
        return handle

    monkeypatch.setattr(loop, "call_later", capture)
    clock = FakeClock(T0)
    ledger = new_ledger(tmp_path, clock, flush_interval=5.0, urgent_flush_interval=0.25)
    ledger.opened("a", T0)
    assert ledger.writes == 1 and not scheduled
    ledger.opened("b", T0)
    assert ledger.writes == 1
    assert [round(d, 6) for d, _, _ in scheduled] == [5.0]
    clock.advance(0.1)
    ledger.failed("c", clock.time())
    assert ledger.writes == 1
    assert [round(d, 6) for d, _, _ in scheduled] == [5.0, 0.15]
    assert scheduled[0][2].cancelled()  # the later timer gave way to the earlier one
    scheduled[1][1]()  # the timer fires
    assert ledger.writes == 2
    assert file_ids(tmp_path) == {"a": "open", "b": "open", "c": "failed"}
    ledger.flush()  # nothing pending: no write, timers cancelled
    assert ledger.writes == 2


def test_corrupt_file_starts_empty_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / LEDGER_FILE).write_text('{"version": 1, "entries": [')
    with caplog.at_level(logging.WARNING):
        ledger = new_ledger(tmp_path, FakeClock(T0))
    assert len(ledger) == 0
    assert "corrupt" in caplog.text
    ledger.opened("a", T0)  # and it can write over the damage
    assert file_ids(tmp_path) == {"a": "open"}


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"entries": {}}',
        '"text"',
        "null",
    ],
)
def test_unexpected_shapes_start_empty(tmp_path: Path, content: str) -> None:
    (tmp_path / LEDGER_FILE).write_text(content)
    assert len(new_ledger(tmp_path, FakeClock(T0))) == 0


def test_malformed_entries_are_skipped_good_ones_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [
        {"request_id": "good", "state": "failed", "opened_at": T0, "finished_at": T0 + 1},
        {"request_id": "", "state": "open", "opened_at": T0},
        {"request_id": "bad-state", "state": "done", "opened_at": T0},
        {"request_id": "bad-time", "state": "open", "opened_at": "yesterday"},
        {"request_id": "bool-time", "state": "open", "opened_at": True},
        {"request_id": "no-finish", "state": "completed", "opened_at": T0},
        "not an object",
        {"request_id": "OPEN", "state": "open", "opened_at": T0, "finished_at": None},
    ]
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"version": 1, "entries": entries}))
    with caplog.at_level(logging.WARNING):
        ledger = new_ledger(tmp_path, FakeClock(T0 + 2))
    assert set(ledger.snapshot().entries) == {"good", "open"}
    assert "skipped 6 malformed entries" in caplog.text


def test_load_applies_retention_and_bound(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    first = new_ledger(tmp_path, clock)
    for i in range(6):
        first.opened(f"r{i}", T0 + i * 1000)
    first.flush()
    clock.advance(10_000)
    again = new_ledger(tmp_path, clock, retention=7_000.0, max_entries=3)
    # r0..r2 are older than the retention; of the rest the bound keeps the newest three.
    assert set(again.snapshot().entries) == {"r3", "r4", "r5"}
    bounded = new_ledger(tmp_path, clock, max_entries=2)
    assert set(bounded.snapshot().entries) == {"r4", "r5"}


def test_load_snapshot_reads_without_writing(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    ledger = new_ledger(tmp_path, clock)
    ledger.failed("x", T0)
    ledger.opened("old", T0 - 200_000)  # past the default 24h retention at load
    ledger.flush()
    before = (tmp_path / LEDGER_FILE).stat().st_mtime_ns
    snap = RequestLedger.load_snapshot(StateDir(tmp_path), now=T0)
    assert set(snap.entries) == {"x"}
    assert (tmp_path / LEDGER_FILE).stat().st_mtime_ns == before


def test_write_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    target = tmp_path / "state"
    ledger = new_ledger(target, clock)
    shutil.rmtree(target)  # the state directory vanished under us
    with caplog.at_level(logging.WARNING):
        ledger.failed("x", T0)
        ledger.flush()
    assert ledger.writes == 0
    assert "request ledger not saved" in caplog.text
    assert ledger.get("x") is not None  # still known in memory
    target.mkdir()
    ledger.flush()  # still pending: written once the directory is back
    assert file_ids(target) == {"x": "failed"}
