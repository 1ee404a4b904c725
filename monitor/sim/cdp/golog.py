"""CDP's log lines, written the way its Go code writes them: `format_go_duration`
(Go's `time.Duration.String()`), discordgo's error text, and `CdpLog` (the `[GIN]`,
`[WARN]` and `[ERR]` lines, kept in memory and appended to a file)."""

from __future__ import annotations

import json
from collections import deque
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import TextIO

from monitor.clock import Clock
from monitor.errors import DiscordHTTPError


def format_go_duration(seconds: float) -> str:
    """`time.Duration.String()` as Go prints it: `1.234s`, `3m0s`, `250ms`, `12.5µs`."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def frac(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, ns = divmod(ns, 3_600_000_000_000)
    minutes, ns = divmod(ns, 60_000_000_000)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{frac(ns, 1_000_000_000)}s"


def go_error_text(exc: BaseException) -> str:
    """How discordgo's RESTError reads in CDP's logs: `HTTP 400 Bad Request, {...}`."""
    if isinstance(exc, DiscordHTTPError):
        try:
            phrase = HTTPStatus(exc.status).phrase
        except ValueError:
            phrase = ""
        body = json.dumps({"message": exc.discord_message, "code": exc.code or 0})
        return f"HTTP {exc.status} {phrase}, {body}"
    return str(exc) or type(exc).__name__


class CdpLog:
    """The lines CDP writes: the last `capacity` kept in `lines`, all appended to `path`."""

    def __init__(self, clock: Clock, *, capacity: int, path: Path | None) -> None:
        self.clock = clock
        self.path = path
        self.lines: deque[str] = deque(maxlen=capacity)
        self._file: TextIO | None = None

    def open(self) -> None:
        if self.path is not None:
            self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def now_text(self) -> str:
        # Go formats local time without a zone.
        return datetime.fromtimestamp(self.clock.time()).strftime("%Y/%m/%d - %H:%M:%S")

    def emit(self, line: str) -> None:
        self.lines.append(line)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def line(self, level: str, request_id: str | None, message: str) -> None:
        """common.logHelper: `[LEVEL] time | id | message ` (trailing space as in Go)."""
        self.emit(f"[{level}] {self.now_text()} | {request_id or 'UNKNOWN'} | {message} ")

    def gin(
        self, request_id: str, status: int, seconds: float, ip: str, method: str, path: str
    ) -> None:
        # middleware/logger.go: "[GIN] %s | %s | %3d | %13v | %15s | %7s %s"
        self.emit(
            f"[GIN] {self.now_text()} | {request_id} | {status:3d} | "
            f"{format_go_duration(seconds):>13} | {ip:>15} | {method:>7} {path}"
        )
