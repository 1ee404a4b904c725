"""CDP's log as a health signal: parse its lines into events, count them, pass them on.

CDP (common/logger.go, middleware/logger.go) writes lines such as

    [WARN] 2006/01/02 - 15:04:05 | <id> | Create channel timed out, retrying...1
    [ERR] 2006/01/02 - 15:04:05 | <id> | failed after 3 attempts due to timeout, please ...
    [GIN] 2006/01/02 - 15:04:05 | <id> | 500 |   3m0s |   127.0.0.1 |    POST /v1/chat/...

WARN/ERR go to stderr and GIN/INFO to stdout, so a followed command gets both.
Following a file or a command lives in follow.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

# Re-exported: the daemon imports the followers from here.
from monitor.health.follow import follow_command as follow_command
from monitor.health.follow import follow_file as follow_file
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
