"""CDP restarts logged while the daemon was not reading CDP's log (stopped, SIGKILLed,
starting): the daemon keeps how far it had handled the log file and when
(`cdplog.json` in the state dir). At start it scans what was written since for CDP's
start lines and records each restart no later than it happened: an earlier restart
time only spares channels (a channel counts as outliving CDP's process only when
created before the restart; DESIGN 7b). The time is the start line's own (CDP's local
time, whole seconds, rounded down) converted with CDP's UTC offset, learnt from the
lines read live (each is read within a poll of being written; offsets are whole
quarter hours); without one, or when the result falls outside the time the daemon was
away, it is the time of the daemon's last look. Then the log is followed from where the
scan ended, so no line falls in between. A log read through a command (`docker logs
-f`) has no position to keep: no catch-up there.

The position saved never runs ahead of what `ledger.json` holds: a start line the
follower handled is written to the ledger at once (monitor/health/cdpwire.py), and the
position after it is saved right after that."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.clock import Clock
from monitor.config import CdpLogConfig
from monitor.errors import StateError
from monitor.health.cdplog import CdpLogEvent, CdpLogSignal, CdpStarted, parse_line
from monitor.health.cdpwire import cdplog_lines
from monitor.health.follow import FileId, Start, follow_file, follow_newest, newest_file
from monitor.ledger import RequestLedger
from monitor.state import StateDir, finite, past_time

CURSOR_FILE = "cdplog.json"
SAVE_EVERY = 5.0  # seconds between saves of the position (an older one is only weaker)
SCAN_MAX = 64 << 20  # bytes scanned at start at most: a start line is near the end
QUARTER_HOUR = 900.0  # UTC offsets are whole quarter hours


@dataclass(frozen=True, slots=True)
class LogMark:
    """By `at` every line of `path` before `offset` was handled; every byte from `offset`
    on was written after `at`."""

    path: str
    file: FileId
    offset: int
    at: float
    utc_offset: float | None = None  # CDP's local time minus UTC, seconds (None: unknown)

    def to_json(self) -> dict[str, Any]:
        dev, ino = self.file
        out = {"path": self.path, "dev": dev, "ino": ino, "offset": self.offset, "at": self.at}
        return {**out, "utc_offset": self.utc_offset}

    @classmethod
    def from_json(cls, raw: Any, now: float) -> LogMark:
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            raise ValueError("not a log position")
        dev, ino, offset = (_whole(raw.get(k)) for k in ("dev", "ino", "offset"))
        at = past_time(raw.get("at"), "at", now)
        utc = raw.get("utc_offset")
        utc_offset = None if utc is None else finite(utc, "utc_offset")
        if utc_offset is not None and (abs(utc_offset) > 86_400 or utc_offset % QUARTER_HOUR):
            raise ValueError(f"utc_offset: {utc_offset!r} is not a UTC offset")
        return cls(raw["path"], (dev, ino), offset, at, utc_offset)


def _whole(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("dev, ino and offset must be whole numbers")
    return value


def local_epoch(logged_at: datetime) -> float:
    """A CDP log time (local, no zone) as if it were UTC: minus CDP's UTC offset, the time."""
    return logged_at.replace(tzinfo=UTC).timestamp()


def scan_for_start(path: Path, start: Start | None) -> tuple[Start | None, list[CdpStarted]]:
    """Read `path` from `start` (the whole file when `start` is another file, or beyond
    its end) to its end: where the scan ended, and the CDP start lines in it."""
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            ident, end = (st.st_dev, st.st_ino), st.st_size
            offset = start[1] if start is not None and start[0] == ident else 0
            offset = 0 if offset > end else max(offset, end - SCAN_MAX)
            fh.seek(offset)
            data = fh.read(end - offset)
    except OSError:
        return None, []
    # Complete lines only: a line still being written is the follower's.
    complete = data[: data.rfind(b"\n") + 1]
    lines = complete.decode("utf-8", errors="replace").splitlines()
    found = [e for e in map(parse_line, lines) if isinstance(e, CdpStarted)]
    return (ident, offset + len(complete)), found


class CdpLogResume:
    """The CDP log's lines for the CDP log signal, caught up on the restarts logged while
    the daemon was away (a file or the newest file of a glob; a command as before)."""

    def __init__(
        self,
        signal: CdpLogSignal,
        ledger: RequestLedger,
        state_dir: StateDir,
        clock: Clock,
        logger: logging.Logger,
    ) -> None:
        self._state_dir, self._ledger = state_dir, ledger
        self._clock, self._log = clock, logger
        self._saved_at = -float("inf")  # monotonic
        self._restart = ledger.restarts[-1:]  # the latest restart when last saved
        self.utc_offset: float | None = None  # CDP's, learnt from the lines read live
        signal.subscribe(self._observe)

    def _observe(self, event: CdpLogEvent) -> None:
        if event.logged_at is not None:  # just written (a poll ago): CDP's UTC offset
            late = local_epoch(event.logged_at) - self._clock.time()
            self.utc_offset = round(late / QUARTER_HOUR) * QUARTER_HOUR

    def load(self) -> LogMark | None:
        raw = self._state_dir.read_json(CURSOR_FILE)
        if raw is None:
            return None
        try:
            return LogMark.from_json(raw, self._clock.time())
        except ValueError as exc:
            self._log.warning("%s ignored: %s", CURSOR_FILE, exc)
            return None

    def lines(self, config: CdpLogConfig) -> AsyncIterator[str]:
        """The lines `signals.cdp_log` names, after the catch-up."""
        if config.file is None and config.glob is None:  # a command: no position to keep
            return cdplog_lines(config, clock=self._clock, logger=self._log)
        glob = None if config.glob is None else str(config.glob)
        path = config.file or (newest_file(glob) if glob is not None else None)
        start = None if path is None else self.catch_up(Path(path), self.load(), glob=glob)
        if config.file is not None:
            return follow_file(
                config.file, clock=self._clock, logger=self._log, start=start, on_mark=self.mark
            )
        assert glob is not None
        return follow_newest(
            glob, clock=self._clock, logger=self._log, start=start, on_mark=self.mark
        )

    def catch_up(self, path: Path, mark: LogMark | None, *, glob: str | None) -> Start | None:
        """Scan what `path` got since `mark`; a CDP start line in it is a restart at
        `mark.at`. Returns where the follower goes on from (None: its end, no mark).
        With a glob, a file that sorts after the mark's is newer than the mark: all of
        it is scanned; any other file than the mark's says nothing about its time."""
        if mark is None:
            return None  # first start: nothing known about earlier lines
        old = Path(mark.path)
        if mark.path == str(path):
            since: Start | None = (mark.file, mark.offset)
        elif glob is not None and fnmatch.fnmatch(mark.path, glob) and path.name > old.name:
            since = None
        else:
            return None
        self.utc_offset = mark.utc_offset
        start, found = scan_for_start(path, since)
        dead = sum(self._ledger.cdp_restarted(self._dated(e, mark)) for e in found)
        if found:
            self._ledger.flush()
            self._restart = self._ledger.restarts[-1:]
            self._log.warning(
                "CDP started %d times while the monitor was not reading its log (%s): its "
                "delete timers are gone; %d open requests died; their channels are "
                "reconciled once their time has passed",
                len(found),
                path,
                dead,
            )
        return start

    def _dated(self, started: CdpStarted, mark: LogMark) -> float:
        """When CDP started, no later than it did: its line's time in UTC, or when the
        daemon last looked if that is unknown or outside the time the daemon was away."""
        if started.logged_at is None or self.utc_offset is None:
            return mark.at
        at = local_epoch(started.logged_at) - self.utc_offset  # whole seconds: rounded down
        return max(at, mark.at) if at <= self._clock.time() else mark.at

    def mark(self, path: Path, file: FileId, offset: int, at: float) -> None:
        """The follower handled `path` up to `offset` by `at`: saved every SAVE_EVERY,
        and at once after a restart (already in ledger.json)."""
        mono = self._clock.monotonic()
        restart = self._ledger.restarts[-1:]
        if mono - self._saved_at < SAVE_EVERY and restart == self._restart:
            return
        mark = LogMark(str(path), file, offset, at, self.utc_offset)
        try:
            self._state_dir.write_json(CURSOR_FILE, mark.to_json())
        except StateError as exc:
            self._log.warning("CDP log position not saved: %s", exc)
            return
        self._saved_at, self._restart = mono, restart


__all__ = ["CURSOR_FILE", "CdpLogResume", "LogMark", "scan_for_start"]
