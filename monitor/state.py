"""The state directory: the manual pause, the breaker's history, the audit log, the
gateway session's IDENTIFY times and the guild's channel creations of the last 24 h.

Every JSON file is replaced atomically (temp file in the same directory, fsync, rename,
fsync of the directory), so a crash leaves either the old or the new version. Loading is
tolerant: a missing file is "absent", a corrupt one is logged and treated as absent;
the daemon must never fail to start because of a damaged state file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
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


_T = TypeVar("_T")


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _number(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    # bool is an int subclass; a boolean timestamp is corruption, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _optional_number(obj: Mapping[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _number(obj, key)


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
    def from_json(cls, obj: Any) -> BreakerRecord:
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
        return cls(
            state=state,
            since=_number(obj, "since"),
            trips=trips,
            opened_at=_optional_number(obj, "opened_at"),
            closed_since=_optional_number(obj, "closed_since"),
            last_transition=last,
        )


class StateDir:
    """A private directory (mode 0700) holding the daemon's persistent state."""

    def __init__(
        self, path: str | os.PathLike[str], *, logger: logging.Logger | None = None
    ) -> None:
        self._path = Path(path)
        self._log = logger or logging.getLogger(__name__)
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
        data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
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

    def load_pause(self) -> PauseRecord | None:
        return self._load(PAUSE_FILE, PauseRecord.from_json)

    def save_pause(self, pause: PauseRecord | None) -> None:
        """Persist the pause; None clears it."""
        if pause is None:
            self.remove(PAUSE_FILE)
        else:
            self.write_json(PAUSE_FILE, pause.to_json())

    # -- breaker history --------------------------------------------------------------

    def load_breaker(self) -> BreakerRecord | None:
        return self._load(BREAKER_FILE, BreakerRecord.from_json)

    def save_breaker(self, record: BreakerRecord) -> None:
        self.write_json(BREAKER_FILE, record.to_json())

    def _load(self, name: str, parse: Callable[[Any], _T]) -> _T | None:
        obj = self.read_json(name)
        if obj is None:
            return None
        try:
            return parse(obj)
        except ValueError as e:
            self._log.warning("state file %s has unexpected content, ignoring it: %s", name, e)
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
        line = (json.dumps(dict(record), sort_keys=True, separators=(",", ":")) + "\n").encode()
        target = self._file(AUDIT_FILE)
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
