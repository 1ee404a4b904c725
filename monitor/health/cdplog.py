"""CDP's log as a signal: parse its lines into events, count them, pass them on.

CDP (common/logger.go, middleware/logger.go, v4.6.5) writes lines such as

    [SYS] 2006/01/02 - 15:04:05 | COZE-DISCORD-PROXY v4.6.5 started
    [WARN] 2006/01/02 - 15:04:05 | <rid> | Create channel timed out, retrying...1
    [ERR] 2006/01/02 - 15:04:05 | <rid> | failed after 3 attempts due to timeout, please ...
    [ERR] 2006/01/02 - 15:04:05 | <rid> | HTTP 403 Forbidden, {"message": ..., "code": 50013}
    [FATAL] 2006/01/02 - 15:04:05 | [环境变量 BOT_TOKEN 未设置]
    [GIN] 2006/01/02 - 15:04:05 | <rid> | 500 |   3m0s |   127.0.0.1 |    POST /v1/chat/...
    2006/01/02 15:04:05 [DG0] wsapi.go:735:heartbeat() haven't gotten a heartbeat ACK ...

(each CDP line ends with a space; WARN/ERR/FATAL on stderr, SYS/INFO/GIN on stdout;
discordgo's `[DG0]` lines on stderr only). Every pattern is anchored to that prefix,
optionally after a `docker logs -t` RFC 3339 timestamp or a journald `-o short` prefix:
a prompt CDP logs with raw newlines (`prompt已超过限制,请分段发送 [%v] %s`) yields lines
without the prefix, which are never a signal.

Events (each carries the request id when the line has one):

* `CreateRetry`: one 60 s attempt abandoned (`retrying...N`, the 3rd included).
* `CreateFailure(reason)`: CDP failed to create a request's channel; reasons in
  `monitor.vocab.CDP_FAILURE_REASONS`.
* `CdpStarted`: a CDP process started (`COZE-DISCORD-PROXY <v> started`): every
  pending delete timer and every open request of the old process is gone.
* `CdpTrouble(kind)`: CDP-side trouble, `monitor.vocab.CDP_ERROR_KINDS` (user tokens,
  CDP's own gateway, `[FATAL]`, a failed auto-delete (a leak), a purge of in-use
  channels by `MAX_CHANNEL_DEL_TYPE`, a guild full with nothing to purge).
* `RequestOutcome`: one `[GIN]` access-log line.

Subscribing: `CdpLogSignal.subscribe(callback, request_id=None)` calls `callback(event)`
on the event loop's thread for every event (or, with `request_id`, only for events
carrying that id, compared lowercased as Discord stores channel names) and returns a
function that unsubscribes. Callbacks must be quick and must not raise (an exception is
logged and the other subscribers still run). Following a file, the newest file of a
glob or a command lives in follow.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from datetime import datetime

# Re-exported: the wiring imports the followers from here.
from monitor.health.follow import follow_command as follow_command
from monitor.health.follow import follow_file as follow_file
from monitor.health.follow import follow_newest as follow_newest
from monitor.health.window import Sample
from monitor.metrics import Metrics

_log = logging.getLogger(__name__)

# Requests for which CDP creates a channel (DESIGN section 7). The log cannot show
# whether a chat request carried a channelId, so chat/images count as creating.
CREATING_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/images/generations", "/api/channel/create", "/api/thread/create"}
)
# Failures that say something about Discord (a sample for the health window). A 403 or
# another 4xx is the bot's permissions or CDP's request: the operator's to fix.
DISCORD_FAILURE_REASONS = frozenset(
    {"timeout", "http_timeout", "limit_30013", "bad_gateway", "server_error", "network"}
    | {"retries_exhausted"}
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
    """CDP failed to create a channel for a request (CDP_FAILURE_REASONS)."""

    reason: str
    request_id: str | None
    logged_at: datetime | None = None

    def sample(self, now: float) -> Sample | None:
        return Sample("cdplog", now, ok=False) if self.reason in DISCORD_FAILURE_REASONS else None


@dataclass(frozen=True, slots=True)
class CdpStarted:
    """A CDP process started: the old one's delete timers and open requests are gone."""

    version: str | None
    logged_at: datetime | None = None
    request_id: None = None

    def sample(self, now: float) -> Sample | None:
        return None


@dataclass(frozen=True, slots=True)
class CdpTrouble:
    """CDP-side trouble (CDP_ERROR_KINDS); never a sample about Discord."""

    kind: str
    request_id: str | None
    detail: str
    channel_id: str | None = None  # the channel a purge deleted
    logged_at: datetime | None = None

    def sample(self, now: float) -> Sample | None:
        return None


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


CdpLogEvent = CreateRetry | CreateFailure | CdpStarted | CdpTrouble | RequestOutcome

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# `docker logs -t`: RFC 3339 with nanoseconds; journald `-o short`: "May 01 12:00:00 host
# cdp[123]: ". Either, at most one, before CDP's own prefix.
_OUTER = (
    r"(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}) "
    r"|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \S+ [^\s:\[]+(?:\[\d+\])?: )?"
)
_TS = r"(?P<ts>\d{4}/\d{2}/\d{2} - \d{2}:\d{2}:\d{2})"
_CDP_RE = re.compile("^" + _OUTER + r"\[(?P<level>SYS|INFO|WARN|ERR|FATAL|GIN)\] " + _TS + r" \| ")
_DG_RE = re.compile("^" + _OUTER + r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} \[DG\d\] (?P<msg>.*)")
_GIN_RE = re.compile(
    r"(?P<rid>[^|]*?)\s*\|\s*(?P<status>\d{3})\s*\|\s*(?P<dur>[^|]*?)\s*\|"
    r"\s*(?P<ip>[^|]*?)\s*\|\s*(?P<method>[A-Z]+)\s+(?P<path>\S+)"
)
_TS_FORMAT = "%Y/%m/%d - %H:%M:%S"

# Messages, matched from the message's start (`re.match`).
_RETRY_RE = re.compile(r"Create channel timed out, retrying\.\.\.\s*(?P<attempt>\d+)?")
_STARTED_RE = re.compile(r"COZE-DISCORD-PROXY (?P<version>\S+) started")
_HTTP_RE = re.compile(r"(?:Exceeded Max retries )?HTTP (?P<code>\d{3})\b")
_CREATE_POST_RE = re.compile(r'Post "[^"]*/guilds/\d+/channels": (?P<err>.*)')
_LIMIT_TEXT = re.compile(r"Maximum number of (?:server|guild) channels reached|\b30013\b")
_USER_TOKEN_RE = re.compile(
    r"error sending message|Error sending request|USER_AUTHORIZATION:.*(?:EXPIRED|DAILY LIMIT)"
    r"|无可用的 user_auth|user_auth:.* result:"
)
# CDP's own messages about its channels (discord/channel.go); no request id in them.
_PURGED_RE = re.compile(r"频道数量已满-自动删除频道Id (?P<cid>\d+)")
_PURGE_FAILED = "频道数量已满-删除频道异常"
_CREATE_ERR_PREFIXES = ("创建频道时异常 ",)  # /api/channel/create, and issue #45's form
_LEGACY_RETRY = "Failed to create channel, error: "

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


def failure_reason(message: str) -> str | None:
    """The CDP_FAILURE_REASONS reason of a channel-create error CDP logged, or None.

    CDP logs the create error raw (`chat.go:179`): its own timeout text, discordgo's
    `RESTError` (`HTTP <status>, <body>`, after 502 retries `Exceeded Max retries ...`)
    or a net/http error on `POST /guilds/<id>/channels`."""
    if message.startswith(_CREATE_ERR_PREFIXES):
        message = message.split(" ", 1)[1]
    if re.match(r"failed after \d+ attempts due to timeout", message):
        return "timeout"
    if message.startswith("failed to create channel after"):  # CDP v4.3.6-v4.3.8
        return "retries_exhausted"
    if (http := _HTTP_RE.match(message)) is not None:
        code = int(http["code"])
        if _LIMIT_TEXT.search(message):
            return "limit_30013"
        if code == 403:
            return "forbidden"
        if code == 502:
            return "bad_gateway"
        return "server_error" if code >= 500 else "http_error"
    if (post := _CREATE_POST_RE.match(message)) is not None:
        deadline = "Client.Timeout exceeded" in post["err"] or "deadline exceeded" in post["err"]
        return "http_timeout" if deadline else "network"
    if message.startswith("当前Discord服务器频道已满"):  # full, nothing to purge (channel.go:149)
        return "limit_30013"
    if message.startswith("Maximum number of ") and _LIMIT_TEXT.match(message):  # the emulator
        return "limit_30013"
    return None


def _leveled(level: str, rest: str, logged_at: datetime | None) -> CdpLogEvent | None:
    """An INFO/WARN/ERR line: `<rid> | <message> `."""
    rid_text, sep, message = rest.partition(" | ")
    if not sep:
        return None
    rid = _request_id(rid_text)
    message = message.rstrip()
    if level == "WARN" and (retry := _RETRY_RE.match(message)) is not None:
        attempt = int(retry["attempt"]) if retry["attempt"] is not None else None
        return CreateRetry(request_id=rid, attempt=attempt, logged_at=logged_at)
    if (purged := _PURGED_RE.match(message)) is not None:
        return CdpTrouble("purge", rid, message, channel_id=purged["cid"], logged_at=logged_at)
    if message.startswith(_PURGE_FAILED):
        return CdpTrouble("guild_full", rid, message, logged_at=logged_at)
    if message.startswith("删除频道时异常"):
        return CdpTrouble("delete_failed", rid, message, logged_at=logged_at)
    if _USER_TOKEN_RE.match(message):
        return CdpTrouble("user_token", rid, message, logged_at=logged_at)
    if message.startswith(_LEGACY_RETRY):  # v4.3.6-v4.3.8 retried on every error
        return CreateRetry(request_id=rid, attempt=None, logged_at=logged_at)
    if level in ("ERR", "WARN") and (reason := failure_reason(message)) is not None:
        return CreateFailure(reason=reason, request_id=rid, logged_at=logged_at)
    return None


def _gin(rest: str, logged_at: datetime | None) -> RequestOutcome | None:
    gin = _GIN_RE.match(rest)
    if gin is None:
        return None
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
        logged_at=logged_at,
    )


def parse_line(line: str) -> CdpLogEvent | None:
    """The event a CDP log line reports, or None for every other line."""
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)
    head = _CDP_RE.match(line)
    if head is None:
        dg = _DG_RE.match(line)
        return None if dg is None else CdpTrouble("gateway", None, dg["msg"].rstrip())
    level, logged_at = head["level"], _timestamp(head["ts"])
    rest = line[head.end() :]
    if level == "GIN":
        return _gin(rest, logged_at)
    if level == "SYS":
        if (started := _STARTED_RE.match(rest)) is not None:
            return CdpStarted(started["version"], logged_at)
        return None
    if level == "FATAL":
        return CdpTrouble("fatal", None, rest.rstrip(), logged_at=logged_at)
    return _leveled(level, rest, logged_at)


# --- the signal -----------------------------------------------------------------------

Subscriber = Callable[[CdpLogEvent], None]


class CdpLogSignal:
    """Turns CDP log lines into metrics and events for the health window, the ledger and
    whoever subscribes (see the module docstring)."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        sink: Subscriber | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._metrics = metrics
        self._log = logger or _log
        self._subscribers: list[tuple[str | None, Subscriber]] = []
        if sink is not None:
            self.subscribe(sink)
        self.lines_seen = 0
        self.events_seen = 0

    def subscribe(
        self, callback: Subscriber, *, request_id: str | None = None
    ) -> Callable[[], None]:
        """Call `callback(event)` for every event (or those of `request_id`); returns the
        function that unsubscribes."""
        entry = (None if request_id is None else request_id.strip().lower(), callback)
        self._subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)

        return unsubscribe

    def handle_line(self, line: str) -> CdpLogEvent | None:
        self.lines_seen += 1
        event = parse_line(line)
        if event is None:
            return None
        self.events_seen += 1
        self._count(event)
        rid = None if event.request_id is None else event.request_id.lower()
        for wanted, callback in list(self._subscribers):
            if wanted is not None and wanted != rid:
                continue
            try:
                callback(event)
            except Exception:
                self._log.exception("CDP log signal failed: a subscriber raised on %r", event)
        return event

    def _count(self, event: CdpLogEvent) -> None:
        m = self._metrics
        if isinstance(event, CreateRetry):
            m.cdp_create_retries.inc()
        elif isinstance(event, CreateFailure):
            m.cdp_create_failures.labels(reason=event.reason).inc()
        elif isinstance(event, CdpStarted):
            m.cdp_restarts.inc()
        elif isinstance(event, CdpTrouble):
            m.cdp_errors.labels(kind=event.kind).inc()

    async def consume(self, lines: AsyncIterable[str]) -> None:
        """Handle every line until the iterator ends (followers never end by themselves)."""
        async for line in lines:
            try:
                self.handle_line(line)
            except Exception:
                # One bad event must not stop the signal (and lose the file position).
                self._log.exception("CDP log signal failed on line %r", line[:200])
