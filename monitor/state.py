"""The state directory: the manual pause, the breaker's history, the audit log, the
gateway session's IDENTIFY times and the guild's channel creations of the last 24 h.

Every JSON file is replaced atomically (temp file in the same directory, fsync, rename,
fsync of the directory), so a crash leaves either the old or the new version. Loading is
tolerant: a missing file is "absent", a corrupt one is logged and treated as absent;
the daemon must never fail to start because of a damaged state file. Loading also
validates: every number finite, no time later than `now` plus `MAX_CLOCK_SKEW` (a
wall-clock step back or a damaged file must not keep the breaker open for a month). A
pause whose `since` lies in the future is kept from `now` (the operator's pause outlives
a bad clock); any other violation resets the record. Everything is written as strict
JSON (no NaN or Infinity).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from monitor.errors import StateError
from monitor.vocab import MACHINE_STATES

PAUSE_FILE = "pause.json"
BREAKER_FILE = "breaker.json"
AUDIT_FILE = "audit.jsonl"
IDENTIFIES_FILE = "gateway_identifies.json"
CREATIONS_FILE = "channel_creations.json"
LOCK_FILE = "lock"


_T = TypeVar("_T")


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# How far in the future a stored time may lie (clock skew, NTP steps) before it is
# treated as damage.
MAX_CLOCK_SKEW = 300.0


def finite(value: Any, key: str) -> float:
    """`value` as a finite float; ValueError for anything else (bool, NaN, Infinity)."""
    # bool is an int subclass; a boolean timestamp is corruption, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def past_time(value: Any, key: str, now: float) -> float:
    """A stored time: finite and not later than `now` + MAX_CLOCK_SKEW."""
    t = finite(value, key)
    if t > now + MAX_CLOCK_SKEW:
        raise ValueError(f"{key}: {t:.0f} is {t - now:.0f}s in the future")
    return t


def _number(obj: Mapping[str, Any], key: str) -> float:
    return finite(obj.get(key), key)


def _optional_number(obj: Mapping[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _number(obj, key)


def _optional_past(obj: Mapping[str, Any], key: str, now: float) -> float | None:
    return None if obj.get(key) is None else past_time(obj.get(key), key, now)


def _check_strict(value: Any, key: str) -> None:
    """ValueError if `value` holds a NaN or an infinity anywhere (not strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_strict(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strict(v, f"{key}[{i}]")


def strict_dumps(obj: Any, **kw: Any) -> str:
    """json.dumps refusing NaN and Infinity (ValueError), which strict parsers reject."""
    return json.dumps(obj, allow_nan=False, **kw)


@dataclass(frozen=True, slots=True)
class PauseRecord:
    """A manual pause: `until` is None for an indefinite pause."""

    reason: str
    until: float | None
    since: float

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "until": self.until, "since": self.since}

    @classmethod
    def from_json(cls, obj: Any) -> PauseRecord:
        if not isinstance(obj, dict):
            raise ValueError("expected an object")
        reason = obj.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("reason: expected a string")
        return cls(reason=reason, until=_optional_number(obj, "until"), since=_number(obj, "since"))


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """What the breaker needs to resume after a restart, backoff included."""

    state: str
    since: float
    trips: int
    opened_at: float | None = None
    closed_since: float | None = None
    last_transition: Mapping[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "trips": self.trips,
            "opened_at": self.opened_at,
            "closed_since": self.closed_since,
            "last_transition": dict(self.last_transition) if self.last_transition else None,
        }

    @classmethod
    def from_json(cls, obj: Any, now: float) -> BreakerRecord:
        """Validated: finite numbers, no time in the future (ValueError otherwise)."""
        if not isinstance(obj, dict):
            raise ValueError("expected an object")
        state = obj.get("state")
        if state not in MACHINE_STATES:
            raise ValueError(f"state: expected one of {', '.join(MACHINE_STATES)}, got {state!r}")
        trips = obj.get("trips", 0)
        if isinstance(trips, bool) or not isinstance(trips, int) or trips < 0:
            raise ValueError(f"trips: expected a non-negative integer, got {trips!r}")
        last = obj.get("last_transition")
        if last is not None and not isinstance(last, dict):
            raise ValueError("last_transition: expected an object or null")
        _check_strict(last, "last_transition")
        return cls(
            state=state,
            since=past_time(obj.get("since"), "since", now),
            trips=trips,
            opened_at=_optional_past(obj, "opened_at", now),
            closed_since=_optional_past(obj, "closed_since", now),
            last_transition=last,
        )


class StateDir:
    """A private directory (mode 0700) holding the daemon's persistent state."""

    def __init__(
        self, path: str | os.PathLike[str], *, logger: logging.Logger | None = None
    ) -> None:
        self._path = Path(path)
        self._log = logger or logging.getLogger(__name__)
        self._lock_fd: int | None = None
        try:
            if not self._path.is_dir():
                self._path.mkdir(mode=0o700, parents=True)
                # mkdir's mode is filtered by the umask; make the intent explicit.
                os.chmod(self._path, 0o700)
        except OSError as e:
            msg = f"cannot create state directory: {_why(e)}"
            raise StateError(msg, path=str(path)) from e

    @property
    def path(self) -> Path:
        return self._path

    def lock(self) -> None:
        """Take the directory's lock: one daemon per state dir (two would interleave the
        audit log and fight over the pause). The kernel drops a flock when its process
        dies, so a crash leaves no stale lock; `unlock` releases it (idempotent)."""
        if self._lock_fd is not None:
            return
        target = self._file(LOCK_FILE)
        try:
            fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StateError(f"cannot open the lock: {_why(e)}", path=str(target)) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            msg = f"another cdp-monitor (pid {holder}) is running on this state directory"
            raise StateError(msg, path=str(self._path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _file(self, name: str) -> Path:
        # Names come from code, not users; refuse anything that could escape the directory.
        if not name or name != os.path.basename(name) or name.startswith("."):
            raise ValueError(f"invalid state file name {name!r}")
        return self._path / name

    # -- generic JSON -----------------------------------------------------------------

    def read_json(self, name: str) -> Any | None:
        """The decoded content of `name`, or None if it is missing, unreadable or corrupt."""
        target = self._file(name)
        try:
            text = target.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            self._log.error("state file %s unreadable, treating it as absent: %s", target, e)
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            self._log.warning("state file %s is corrupt, treating it as absent: %s", target, e)
            return None

    def write_json(self, name: str, obj: Any) -> None:
        """Replace `name` atomically with `obj` as JSON; raises StateError on I/O failure."""
        target = self._file(name)
        # Serialize first: an unserializable object must not leave a temp file behind.
        try:
            data = (strict_dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
        except ValueError as e:  # a NaN: a bug upstream, but never a non-standard file
            raise StateError(f"cannot serialise: {e}", path=str(target)) from e
        try:
            fd, tmp = tempfile.mkstemp(dir=self._path, prefix=f".{name}.", suffix=".tmp")
        except OSError as e:
            raise StateError(f"cannot create temp file: {_why(e)}", path=str(target)) from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StateError(f"cannot write: {_why(e)}", path=str(target)) from e
        self._fsync_dir()

    def remove(self, name: str) -> None:
        """Delete `name` if present (unlink is atomic)."""
        target = self._file(name)
        try:
            target.unlink(missing_ok=True)
        except OSError as e:
            raise StateError(f"cannot remove: {_why(e)}", path=str(target)) from e
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        # Makes the rename/unlink itself durable; best effort (not every platform allows it).
        try:
            dfd = os.open(self._path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)

    # -- pause ------------------------------------------------------------------------

    def load_pause(self, now: float | None = None) -> PauseRecord | None:
        """The saved pause, validated against `now` (default: the wall clock)."""
        at = time.time() if now is None else now
        pause = self._load(PAUSE_FILE, PauseRecord.from_json)
        if pause is not None and pause.since > at + MAX_CLOCK_SKEW:
            self._log.warning(
                "state file %s: the pause starts %.0fs in the future; counting it from now",
                PAUSE_FILE,
                pause.since - at,
            )
            pause = dataclasses.replace(pause, since=at)
        return pause

    def save_pause(self, pause: PauseRecord | None) -> None:
        """Persist the pause; None clears it."""
        if pause is None:
            self.remove(PAUSE_FILE)
        else:
            self.write_json(PAUSE_FILE, pause.to_json())

    # -- breaker history --------------------------------------------------------------

    def load_breaker(self, now: float | None = None) -> BreakerRecord | None:
        """The saved breaker history, validated against `now` (default: the wall clock)."""
        at = time.time() if now is None else now
        return self._load(BREAKER_FILE, lambda obj: BreakerRecord.from_json(obj, at))

    def save_breaker(self, record: BreakerRecord) -> None:
        self.write_json(BREAKER_FILE, record.to_json())

    def _load(self, name: str, parse: Callable[[Any], _T]) -> _T | None:
        obj = self.read_json(name)
        if obj is None:
            return None
        try:
            return parse(obj)
        except ValueError as e:
            self._log.warning("state file %s has unexpected content, resetting it: %s", name, e)
            return None

    # -- gateway session: own IDENTIFYs and the guild's creations (each of 24 h) -------

    def load_identifies(self) -> list[float]:
        """When the daemon IDENTIFYed (a restart must not reset the daily budget)."""
        obj = self.read_json(IDENTIFIES_FILE)
        items = obj.get("identifies") if isinstance(obj, dict) else None
        if not isinstance(items, list):
            return []
        return [float(t) for t in items if isinstance(t, int | float) and not isinstance(t, bool)]

    def save_identifies(self, times: list[float]) -> None:
        self.write_json(IDENTIFIES_FILE, {"identifies": times})

    def load_creations(self) -> dict[str, float]:
        """Channel id -> creation time, for the guild's creations of the last 24 h."""
        obj = self.read_json(CREATIONS_FILE)
        items = obj.get("creations") if isinstance(obj, dict) else None
        if not isinstance(items, dict):
            return {}
        return {
            str(k): float(v)
            for k, v in items.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }

    def save_creations(self, creations: dict[str, float]) -> None:
        self.write_json(CREATIONS_FILE, {"creations": creations})

    # -- audit log --------------------------------------------------------------------

    def append_audit(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to audit.jsonl, flushed and fsynced before returning."""
        target = self._file(AUDIT_FILE)
        try:
            text = strict_dumps(dict(record), sort_keys=True, separators=(",", ":"))
        except ValueError as e:
            raise StateError(f"cannot serialise audit record: {e}", path=str(target)) from e
        line = (text + "\n").encode()
        try:
            fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                # After a crash mid-write the file may end in a torn line; start a new
                # one so this record is not glued onto it.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                # One write() of the whole line: O_APPEND keeps concurrent lines whole.
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            msg = f"cannot append audit record: {_why(e)}"
            raise StateError(msg, path=str(target)) from e

    def read_audit(self) -> Iterator[dict[str, Any]]:
        """The audit records in order; a torn or corrupt line (crash mid-write) is skipped."""
        target = self._file(AUDIT_FILE)
        try:
            f = target.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        with f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    self._log.warning("%s:%d: skipping corrupt audit line", target, lineno)
                    continue
                if isinstance(rec, dict):
                    yield rec
