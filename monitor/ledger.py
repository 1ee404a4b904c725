"""The gate's request ledger: which temporary channels belong to which request, in which state.

CDP names a request's channel `cdp-chat-<requestId>` (`cdp-对话-<requestId>` before v4.4.3)
and returns the id in `X-Request-Id`; Discord stores the name lowercased. The gate records
each channel-creating request as `open` when CDP starts answering, then `completed` or
`failed`. The reconciler reads the ledger to never touch a channel whose request is still
running, and to delete the late channels of requests that are over.

The ledger is bounded (the oldest request is evicted first), expiring (`prune`), and
persisted to `ledger.json` in the state directory: rewritten atomically at most once per
`flush_interval`, but within `urgent_flush_interval` after a failure, because the
channels of a failed request may appear long after the request ended, possibly after a
restart. Entries still open when the process stops stay open after loading: their
channels keep their protection until `retention` expires them (the conservative choice;
CDP's own timer normally deletes those channels).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.errors import StateError
from monitor.state import StateDir, past_time
from monitor.vocab import CHANNEL_PREFIXES

LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 1
# Discord lowercases channel names, so prefixes and request ids are compared lowercased.
LedgerState = Literal["open", "completed", "failed"]
LEDGER_STATES: tuple[LedgerState, ...] = ("open", "completed", "failed")
PRUNE_EVERY = 60.0  # seconds between automatic prunes on writes

_LOG = logging.getLogger("monitor.ledger")


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    request_id: str  # lowercased
    state: LedgerState
    opened_at: float
    finished_at: float | None = None

    @property
    def last_change(self) -> float:
        return self.opened_at if self.finished_at is None else self.finished_at

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "state": self.state,
            "opened_at": self.opened_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, obj: Any, now: float) -> LedgerEntry:
        """Validated: finite times, none in the future (an entry opened "next month"
        would protect its channel for a month)."""
        if not isinstance(obj, dict):
            raise ValueError("entry is not an object")
        rid = obj.get("request_id")
        if not isinstance(rid, str) or not normalize_request_id(rid):
            raise ValueError(f"request_id: expected a non-empty string, got {rid!r}")
        state = obj.get("state")
        if state not in LEDGER_STATES:
            raise ValueError(f"state: expected one of {', '.join(LEDGER_STATES)}, got {state!r}")
        opened_at = past_time(obj.get("opened_at"), "opened_at", now)
        finished = obj.get("finished_at")
        finished_at = None if finished is None else past_time(finished, "finished_at", now)
        if state != "open" and finished_at is None:
            raise ValueError(f"finished_at: required for a {state} entry")
        return cls(normalize_request_id(rid), state, opened_at, finished_at)


def normalize_request_id(request_id: str) -> str:
    return request_id.strip().lower()


def request_id_from_channel_name(name: str) -> str | None:
    """`cdp-chat-<id>` / `cdp-对话<id>` / `对话<id>` (any case) → `<id>` lowercased; else None."""
    low = name.lower()
    for prefix in CHANNEL_PREFIXES:
        if low.startswith(prefix):
            return low[len(prefix) :] or None
    return None


class LedgerView(Protocol):
    """What the reconciler reads: a live ledger or a frozen snapshot of one."""

    def lookup_channel_name(self, name: str) -> LedgerEntry | None: ...


@dataclass(frozen=True)
class LedgerSnapshot:
    """An immutable copy of the ledger (entries are immutable too), for the pure planner."""

    entries: Mapping[str, LedgerEntry]

    def lookup_channel_name(self, name: str) -> LedgerEntry | None:
        rid = request_id_from_channel_name(name)
        return None if rid is None else self.entries.get(rid)

    def __len__(self) -> int:
        return len(self.entries)


EMPTY_LEDGER = LedgerSnapshot(MappingProxyType({}))


class RequestLedger:
    """The live ledger the gate writes. All methods run on the event loop's thread."""

    def __init__(
        self,
        *,
        state_dir: StateDir | None,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOG,
        max_entries: int = 10_000,
        retention: float = 86_400.0,
        flush_interval: float = 5.0,
        urgent_flush_interval: float = 0.25,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._state_dir = state_dir
        self._clock = clock
        self._log = logger
        self._max_entries = max_entries
        self._retention = retention
        self._flush_interval = flush_interval
        self._urgent_interval = urgent_flush_interval
        # Insertion order is opening order: eviction pops from the front.
        self._entries: OrderedDict[str, LedgerEntry] = OrderedDict()
        self._dirty = False
        self._last_write = -math.inf  # monotonic
        self._last_prune = -math.inf  # wall clock
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf  # monotonic time the scheduled flush is for
        self.writes = 0  # how many times ledger.json was written (tests, debugging)
        if state_dir is not None:
            self._load(state_dir)

    # -- the gate's side -------------------------------------------------------------

    def opened(self, request_id: str, now: float) -> None:
        rid = normalize_request_id(request_id)
        if not rid:
            return
        self._entries.pop(rid, None)  # a reopened id moves to the young end
        self._put(LedgerEntry(rid, "open", now))
        self._changed(now, urgent=False)

    def completed(self, request_id: str, now: float) -> None:
        self._finish(request_id, "completed", now)

    def failed(self, request_id: str, now: float) -> None:
        # A failed request's late channels may appear at any time: get it on disk soon.
        self._finish(request_id, "failed", now)

    def _finish(self, request_id: str, state: LedgerState, now: float) -> None:
        rid = normalize_request_id(request_id)
        if not rid:
            return
        old = self._entries.get(rid)
        if old is None:
            # Unknown here (evicted, or opened before a restart that lost it): record it.
            self._put(LedgerEntry(rid, state, now, now))
        else:
            self._entries[rid] = LedgerEntry(rid, state, old.opened_at, now)
        self._changed(now, urgent=state == "failed")

    def _put(self, entry: LedgerEntry) -> None:
        self._entries[entry.request_id] = entry
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    # -- the reconciler's side -------------------------------------------------------

    def get(self, request_id: str) -> LedgerEntry | None:
        return self._entries.get(normalize_request_id(request_id))

    def lookup_channel_name(self, name: str) -> LedgerEntry | None:
        rid = request_id_from_channel_name(name)
        return None if rid is None else self._entries.get(rid)

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(MappingProxyType(dict(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def prune(self, now: float) -> int:
        """Forget entries whose last change is older than `retention`; returns how many."""
        cutoff = now - self._retention
        old = [rid for rid, e in self._entries.items() if e.last_change < cutoff]
        for rid in old:
            del self._entries[rid]
        self._last_prune = now
        if old:
            self._dirty = True
        return len(old)

    # -- persistence -----------------------------------------------------------------

    def flush(self) -> None:
        """Write pending changes now (call at shutdown). Never raises: failures are logged."""
        self._cancel_timer()
        if self._dirty:
            self._write()

    def _changed(self, now: float, *, urgent: bool) -> None:
        if now - self._last_prune >= PRUNE_EVERY:
            self.prune(now)
        self._dirty = True
        if self._state_dir is None:
            return
        delay = self._urgent_interval if urgent else self._flush_interval
        due = self._last_write + delay
        mono = self._clock.monotonic()
        if mono >= due:
            self._cancel_timer()
            self._write()
        elif due < self._timer_due:
            self._schedule(due, mono)

    def _schedule(self, due: float, mono: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next change or flush() writes
        self._cancel_timer()
        self._timer_due = due
        self._timer = loop.call_later(max(0.0, due - mono), self._deferred_flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_due = math.inf

    def _deferred_flush(self) -> None:
        self._timer = None
        self._timer_due = math.inf
        if self._dirty:
            self._write()

    def _write(self) -> None:
        if self._state_dir is None:
            self._dirty = False
            return
        data = {
            "version": LEDGER_VERSION,
            "entries": [e.to_json() for e in self._entries.values()],
        }
        self._last_write = self._clock.monotonic()
        try:
            self._state_dir.write_json(LEDGER_FILE, data)
        except StateError as exc:
            # The gate must never fail because of the ledger; retry on a later change.
            self._log.warning("request ledger not saved: %s", exc)
            return
        self._dirty = False
        self.writes += 1

    def _load(self, state_dir: StateDir) -> None:
        now = self._clock.time()
        entries = load_entries(state_dir, now=now, logger=self._log)
        for entry in entries:
            self._put(entry)
        self.prune(now)
        self._dirty = False
        if self._entries:
            self._log.info("request ledger: loaded %d entries", len(self._entries))

    @classmethod
    def load_snapshot(
        cls, state_dir: StateDir, *, now: float, retention: float = 86_400.0
    ) -> LedgerSnapshot:
        """Read `ledger.json` without taking ownership of it (for the one-shot CLI, which
        must not rewrite the running daemon's file)."""
        cutoff = now - retention
        loaded = load_entries(state_dir, now=now)
        entries = {e.request_id: e for e in loaded if e.last_change >= cutoff}
        return LedgerSnapshot(MappingProxyType(entries))


def load_entries(
    state_dir: StateDir, *, now: float, logger: logging.Logger = _LOG
) -> list[LedgerEntry]:
    """The entries of `ledger.json` in file order; a corrupt file or entry (a time later
    than `now` plus the clock skew included) is logged and skipped (the daemon must start
    whatever the file holds)."""
    data = state_dir.read_json(LEDGER_FILE)  # logs and returns None if corrupt
    if data is None:
        return []
    raw: Iterable[Any]
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        logger.warning("%s has unexpected content; starting with an empty ledger", LEDGER_FILE)
        return []
    raw = data["entries"]
    out: list[LedgerEntry] = []
    bad, why = 0, ""
    for item in raw:
        try:
            out.append(LedgerEntry.from_json(item, now))
        except ValueError as e:
            bad += 1
            why = str(e)
    if bad:
        logger.warning("%s: skipped %d malformed entries (%s)", LEDGER_FILE, bad, why)
    return out


__all__ = [
    "CHANNEL_PREFIXES",
    "EMPTY_LEDGER",
    "LEDGER_FILE",
    "LedgerEntry",
    "LedgerSnapshot",
    "LedgerState",
    "LedgerView",
    "RequestLedger",
    "load_entries",
    "normalize_request_id",
    "request_id_from_channel_name",
]
