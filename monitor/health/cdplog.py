"""CDP's log as a health signal: parse its lines; follow a file or a command's output.

CDP (common/logger.go, middleware/logger.go) writes lines such as

    [WARN] 2006/01/02 - 15:04:05 | <id> | Create channel timed out, retrying...1
    [ERR] 2006/01/02 - 15:04:05 | <id> | failed after 3 attempts due to timeout, please ...
    [GIN] 2006/01/02 - 15:04:05 | <id> | 500 |   3m0s |   127.0.0.1 |    POST /v1/chat/...

WARN/ERR go to stderr and GIN/INFO to stdout, so a followed command gets both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Literal

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.health.window import Sample
from monitor.metrics import Metrics

_log = logging.getLogger(__name__)

FailureReason = Literal["timeout", "channel_limit", "retries_exhausted"]

# Requests for which CDP creates a channel (DESIGN section 7). The log cannot show
# whether a chat request carried a channelId, so chat/images count as creating.
CREATING_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/images/generations", "/api/channel/create", "/api/thread/create"}
)


@dataclass(frozen=True, slots=True)
class CreateRetry:
    """CDP gave up waiting on one channel-create attempt (the attempt may still land)."""

    request_id: str | None
    attempt: int | None
    logged_at: datetime | None = None

    def sample(self, now: float) -> Sample | None:
        """One failure per retry line (window.py's cdplog convention)."""
        return Sample("cdplog", now, ok=False)


@dataclass(frozen=True, slots=True)
class CreateFailure:
    """CDP failed to create a channel for a request."""

    reason: FailureReason
    request_id: str | None
    logged_at: datetime | None = None

    def sample(self, now: float) -> Sample | None:
        return Sample("cdplog", now, ok=False)


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """One request line of CDP's access log."""

    request_id: str | None
    status: int
    duration: float | None
    client_ip: str
    method: str
    path: str
    logged_at: datetime | None = None

    @property
    def creates_channel(self) -> bool:
        return self.method == "POST" and self.path in CREATING_PATHS

    @property
    def failed(self) -> bool:
        """A 5xx on a channel-creating path (not necessarily the create itself)."""
        return self.creates_channel and self.status >= 500

    def sample(self, now: float) -> Sample | None:
        # No sample: the gate already samples every create it forwards, and a 5xx
        # from a failed create also logs an ERR line, which is sampled.
        return None


CdpLogEvent = CreateRetry | CreateFailure | RequestOutcome

# Substrings one of which every interesting line contains: the cheap precheck that
# keeps unknown lines (the vast majority) away from the regexes.
_KEYWORDS = ("GIN", "Create channel", "attempts", "30013", "channels reached")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_TS = r"(?P<ts>\d{4}/\d{2}/\d{2} - \d{2}:\d{2}:\d{2})"
_GIN_RE = re.compile(
    r"\[GIN\]\s+" + _TS + r"\s*\|\s*(?P<rid>[^|]*?)\s*\|\s*(?P<status>\d{3})\s*\|"
    r"\s*(?P<dur>[^|]*?)\s*\|\s*(?P<ip>[^|]*?)\s*\|\s*(?P<method>[A-Z]+)\s+(?P<path>\S+)"
)
_LEVEL_RE = re.compile(r"\[(?P<level>WARN|ERR|INFO)\]\s+" + _TS + r"\s*\|\s*(?P<rest>.*)")
_RETRY_RE = re.compile(r"Create channel timed out, retrying\.\.\.\s*(?P<attempt>\d+)?")
_TIMEOUT_RE = re.compile(r"failed after \d+ attempts due to timeout")
_EXHAUSTED_RE = re.compile(r"failed to create channel after \d+ attempts")
# Bounded by non-digits so a snowflake-like request id containing "30013" is no match.
_LIMIT_RE = re.compile(r"Maximum number of (?:server|guild) channels reached|(?<!\d)30013(?!\d)")
_TS_FORMAT = "%Y/%m/%d - %H:%M:%S"

_DURATION_RE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5, what Go prints
    "μs": 1e-6,  # U+03BC, which Go also accepts
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (`3m0s`, `1.234s`, `250ms`, `12.5µs`, `0s`)."""
    if text == "0":
        return 0.0
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))


def _timestamp(text: str) -> datetime | None:
    # CDP logs local time without a zone; callers needing exactness use their own clock.
    try:
        return datetime.strptime(text, _TS_FORMAT)
    except ValueError:
        return None


def _request_id(text: str) -> str | None:
    text = text.strip()
    return None if not text or text == "UNKNOWN" or any(c.isspace() for c in text) else text


def parse_line(line: str) -> CdpLogEvent | None:
    """The event a CDP log line reports, or None for every other line."""
    if not any(k in line for k in _KEYWORDS):
        return None
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)

    if (gin := _GIN_RE.search(line)) is not None:
        try:
            duration: float | None = parse_go_duration(gin["dur"])
        except ValueError:
            duration = None
        return RequestOutcome(
            request_id=_request_id(gin["rid"]),
            status=int(gin["status"]),
            duration=duration,
            client_ip=gin["ip"],
            method=gin["method"],
            path=gin["path"],
            logged_at=_timestamp(gin["ts"]),
        )

    request_id: str | None = None
    logged_at: datetime | None = None
    if (head := _LEVEL_RE.search(line)) is not None:
        logged_at = _timestamp(head["ts"])
        rid, sep, _ = head["rest"].partition(" | ")
        if sep:
            request_id = _request_id(rid)

    if (retry := _RETRY_RE.search(line)) is not None:
        attempt = int(retry["attempt"]) if retry["attempt"] is not None else None
        return CreateRetry(request_id=request_id, attempt=attempt, logged_at=logged_at)
    reason: FailureReason | None = None
    if _TIMEOUT_RE.search(line):
        reason = "timeout"
    elif _LIMIT_RE.search(line):
        reason = "channel_limit"
    elif _EXHAUSTED_RE.search(line):  # CDP before the "due to timeout" wording
        reason = "retries_exhausted"
    if reason is None:
        return None
    return CreateFailure(reason=reason, request_id=request_id, logged_at=logged_at)


# --- followers ------------------------------------------------------------------------


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class _Tail:
    """Synchronous core of `follow_file`: each `poll` returns the lines added since."""

    def __init__(self, path: Path, *, max_line_bytes: int, log: logging.Logger) -> None:
        self._path = path
        self._max = max_line_bytes
        self._log = log
        self._fh: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._buf = b""
        self._first_look = True

    def _open(self) -> None:
        try:
            fh = self._path.open("rb")
        except FileNotFoundError:
            self._first_look = False  # a file that appears later is all new
            return
        self._fh = fh
        self._ident = _file_id(os.fstat(fh.fileno()))
        if self._first_look:
            fh.seek(0, os.SEEK_END)
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

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def follow_file(
    path: str | os.PathLike[str],
    *,
    clock: Clock = SYSTEM_CLOCK,
    poll_interval: float = 0.5,
    max_line_bytes: int = 1 << 20,
    logger: logging.Logger | None = None,
) -> AsyncGenerator[str, None]:
    """Lines appended to `path`, like `tail -F`, forever.

    Starts at the end of the file if it exists on the first look; a file that appears
    later, replaces it (rotation: new inode) or shrinks below our position (truncation)
    is read from its start. Reads are plain blocking reads of a local file in bounded
    chunks, quick enough not to need a thread.
    """
    tail = _Tail(Path(path), max_line_bytes=max_line_bytes, log=logger or _log)
    try:
        while True:
            for line in tail.poll():
                yield line
            await clock.sleep(poll_interval)
    finally:
        tail.close()


def backoff_delay(consecutive_failures: int, *, initial: float, maximum: float) -> float:
    """Delay before the next restart after `consecutive_failures` (>= 1) quick exits."""
    exponent = min(max(0, consecutive_failures - 1), 64)  # 2.0**n overflows past ~1023
    return min(maximum, initial * 2.0**exponent)


async def follow_command(
    argv: Sequence[str],
    *,
    clock: Clock = SYSTEM_CLOCK,
    backoff_base: float = 1.0,
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


# --- the signal -----------------------------------------------------------------------


class CdpLogSignal:
    """Turns CDP log lines into metrics and events for the health window."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        sink: Callable[[CdpLogEvent], None],
        logger: logging.Logger | None = None,
    ) -> None:
        self._metrics = metrics
        self._sink = sink
        self._log = logger or _log
        self.lines_seen = 0
        self.events_seen = 0

    def handle_line(self, line: str) -> CdpLogEvent | None:
        self.lines_seen += 1
        event = parse_line(line)
        if event is None:
            return None
        self.events_seen += 1
        if isinstance(event, CreateRetry):
            self._metrics.cdp_create_retries.inc()
        elif isinstance(event, CreateFailure):
            self._metrics.cdp_create_failures.labels(reason=event.reason).inc()
        self._sink(event)
        return event

    async def consume(self, lines: AsyncIterable[str]) -> None:
        """Handle every line until the iterator ends (followers never end by themselves)."""
        async for line in lines:
            try:
                self.handle_line(line)
            except Exception:
                # One bad event must not stop the signal (and lose the file position).
                self._log.exception("CDP log signal failed on line %r", line[:200])
