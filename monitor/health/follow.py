"""Following a log source line by line: a file like `tail -F`, the newest file of a glob
(CDP's `--log-dir` writes `log-<start date>.log`, opened once per process start), or a
command's output (restarted with backoff when it exits). Used for CDP's log (cdplog.py
parses the lines).
"""

from __future__ import annotations

import asyncio
import glob as globlib
import logging
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from monitor.clock import SYSTEM_CLOCK, Clock

_log = logging.getLogger(__name__)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


FileId = tuple[int, int]  # (st_dev, st_ino)
# Where a follower goes on from (instead of the end): a file and a byte offset in it.
Start = tuple[FileId, int]
# Called after each poll: the file, how far its lines were handled, the time the poll
# began (every byte from that offset on was written after it).
OnMark = Callable[[Path, FileId, int, float], None]


class _Tail:
    """Synchronous core of `follow_file`: each `poll` returns the lines added since."""

    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int,
        log: logging.Logger,
        from_start: bool = False,
        start: Start | None = None,
    ) -> None:
        self._path = path
        self._max = max_line_bytes
        self._log = log
        self._fh: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._buf = b""
        self._first_look = not from_start
        self._start = start

    def _open(self) -> None:
        try:
            fh = self._path.open("rb")
        except FileNotFoundError:
            self._first_look = False  # a file that appears later is all new
            return
        self._fh = fh
        self._ident = _file_id(os.fstat(fh.fileno()))
        if self._first_look:
            end = fh.seek(0, os.SEEK_END)
            if self._start is not None:  # on from there; another file is all new
                ident, offset = self._start
                fh.seek(offset if ident == self._ident and offset <= end else 0)
        else:
            self._log.info("following %s from its start", self._path)
        self._first_look = False

    def _drain(self) -> list[bytes]:
        assert self._fh is not None
        lines: list[bytes] = []
        while chunk := self._fh.read(65536):
            self._buf += chunk
            *complete, self._buf = self._buf.split(b"\n")
            lines.extend(complete)
            if len(self._buf) > self._max:  # a "line" without end: pass it on in pieces
                lines.append(self._buf)
                self._buf = b""
        return lines

    def poll(self) -> list[str]:
        if self._fh is None:
            self._open()
            if self._fh is None:
                return []
        lines = self._drain()
        if os.fstat(self._fh.fileno()).st_size < self._fh.tell():
            self._log.info("%s was truncated; reading from its start", self._path)
            self._fh.seek(0)
            self._buf = b""
            lines += self._drain()
        try:
            current: tuple[int, int] | None = _file_id(self._path.stat())
        except FileNotFoundError:
            current = None  # rotated away and not yet recreated: keep reading the old one
        if current is not None and current != self._ident:
            # Lines written just before the rotation are still in the old file.
            lines += self._drain()
            if self._buf:
                lines.append(self._buf)
                self._buf = b""
            self._log.info("%s was rotated; reopening", self._path)
            self.close()
            self._open()
            if self._fh is not None:
                lines += self._drain()
        return [_decode(raw) for raw in lines]

    def position(self) -> Start | None:
        """The file read and how far its complete lines were returned."""
        if self._fh is None or self._ident is None:
            return None
        return self._ident, self._fh.tell() - len(self._buf)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _mark(tail: _Tail, on_mark: OnMark | None, path: Path, at: float) -> None:
    if on_mark is None:
        return
    pos = tail.position()
    if pos is not None:
        on_mark(path, pos[0], pos[1], at)


async def follow_file(
    path: str | os.PathLike[str],
    *,
    clock: Clock = SYSTEM_CLOCK,
    poll_interval: float = 0.5,
    max_line_bytes: int = 1 << 20,
    logger: logging.Logger | None = None,
    start: Start | None = None,
    on_mark: OnMark | None = None,
) -> AsyncGenerator[str, None]:
    """Lines appended to `path`, like `tail -F`, forever.

    Starts at the end of the file if it exists on the first look (at `start` when that
    is the file); a file that appears later, replaces it (rotation: new inode) or
    shrinks below our position (truncation) is read from its start. Reads are plain
    blocking reads of a local file in bounded chunks, quick enough not to need a
    thread. `on_mark` hears how far the lines were handled after each poll.
    """
    file = Path(path)
    tail = _Tail(file, max_line_bytes=max_line_bytes, log=logger or _log, start=start)
    try:
        while True:
            at = clock.time()
            for line in tail.poll():
                yield line
            _mark(tail, on_mark, file, at)
            await clock.sleep(poll_interval)
    finally:
        tail.close()


def newest_file(pattern: str) -> Path | None:
    """The file matching `pattern` with the greatest name: CDP's `log-YYYYMMDD.log`
    sorts by date (its modification time would not: an old process may still write)."""
    matches = [Path(p) for p in globlib.glob(pattern) if os.path.isfile(p)]
    return max(matches, key=lambda p: (p.name, str(p))) if matches else None


async def follow_newest(
    pattern: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    poll_interval: float = 0.5,
    max_line_bytes: int = 1 << 20,
    logger: logging.Logger | None = None,
    start: Start | None = None,
    on_mark: OnMark | None = None,
) -> AsyncGenerator[str, None]:
    """Lines appended to the newest file matching `pattern` (e.g. `/var/log/cdp/log-*.log`),
    forever. The newest file on the first look is followed from its end (from `start`
    when that is the file); when a newer one appears (CDP restarted on another day), the
    rest of the old one is read, then the new one from its start. A file that is
    already the newest is never re-read. `on_mark`: as for `follow_file`."""
    log = logger or _log
    current = newest_file(pattern)
    tail = (
        None
        if current is None
        else _Tail(current, max_line_bytes=max_line_bytes, log=log, start=start)
    )
    try:
        while True:
            at = clock.time()
            newest = newest_file(pattern)
            if newest is not None and newest != current:
                if tail is not None:
                    for line in tail.poll():
                        yield line
                    tail.close()
                log.info("following %s (the newest of %s)", newest, pattern)
                current = newest
                # Appeared after we started: every line in it is new.
                tail = _Tail(newest, max_line_bytes=max_line_bytes, log=log, from_start=True)
            if tail is not None and current is not None:
                for line in tail.poll():
                    yield line
                _mark(tail, on_mark, current, at)
            await clock.sleep(poll_interval)
    finally:
        if tail is not None:
            tail.close()


def backoff_delay(consecutive_failures: int, *, initial: float, maximum: float) -> float:
    """Delay before the next restart after `consecutive_failures` (>= 1) quick exits."""
    exponent = min(max(0, consecutive_failures - 1), 64)  # 2.0**n overflows past ~1023
    return min(maximum, initial * 2.0**exponent)


async def follow_command(
    argv: Sequence[str],
    *,
    backoff_base: float,  # signals.cdp_log.restart_backoff
    clock: Clock = SYSTEM_CLOCK,
    backoff_max: float = 60.0,
    stable_after: float = 60.0,
    merge_stderr: bool = True,
    max_line_bytes: int = 1 << 20,
    logger: logging.Logger | None = None,
) -> AsyncGenerator[str, None]:
    """Lines a command prints (e.g. `docker logs -f cdp`), restarting it when it exits.

    Restarts back off exponentially from `backoff_base` to `backoff_max`; a run that
    lasted `stable_after` seconds resets the backoff. stderr is merged by default
    because CDP (and `docker logs`) put WARN/ERR lines there. Close the iterator
    (`contextlib.aclosing`) to stop: the running command is then terminated.
    """
    log = logger or _log
    if not argv:
        raise ValueError("follow_command needs a command")
    quick_exits = 0
    while True:
        started = clock.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.DEVNULL,
                limit=max_line_bytes,
            )
        except OSError as exc:
            log.warning("cannot start log command %s: %s", argv[0], exc)
            status = f"failed to start ({exc.strerror or exc})"
        else:
            try:
                assert proc.stdout is not None
                while True:
                    try:
                        raw = await proc.stdout.readline()
                    except ValueError:
                        log.warning(
                            "log command %s: dropped a line over %d bytes", argv[0], max_line_bytes
                        )
                        continue
                    if not raw:
                        break
                    yield _decode(raw)
                status = f"exited with status {await proc.wait()}"
            finally:
                if proc.returncode is None:
                    await _terminate(proc)
        quick_exits = 1 if clock.monotonic() - started >= stable_after else quick_exits + 1
        delay = backoff_delay(quick_exits, initial=backoff_base, maximum=backoff_max)
        log.warning("log command %s %s; restarting in %gs", argv[0], status, delay)
        await clock.sleep(delay)


async def _terminate(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    try:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    except ProcessLookupError:
        pass
