"""CDP's log lines, byte for byte as its Go code writes them (common/logger.go,
middleware/logger.go), and where they go: `[SYS]`, `[INFO]` and `[GIN]` to stdout,
`[WARN]`, `[ERR]`, SysError and `[FATAL]` to stderr, all of them also to
`<--log-dir>/log-<start date>.log` (opened once per process start), kept in memory.
Also `format_go_duration` (Go's `time.Duration.String()`)."""

from __future__ import annotations

import sys
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import TextIO

from monitor.clock import Clock

STDOUT, STDERR = "stdout", "stderr"


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


class CdpLog:
    """The lines CDP writes. `records` keeps (stream, line) pairs, `lines` the texts
    (without the final newline); `echo` also writes them to sys.stdout/sys.stderr."""

    def __init__(
        self,
        clock: Clock,
        *,
        capacity: int,
        log_dir: Path | None = None,
        path: Path | None = None,
        echo: bool = False,
    ) -> None:
        self.clock = clock
        self.log_dir = log_dir
        self.path = path
        self.echo = echo
        self.records: deque[tuple[str, str]] = deque(maxlen=capacity)
        self.lines: deque[str] = deque(maxlen=capacity)
        self._files: list[TextIO] = []
        self.dir_file: Path | None = None

    def open(self) -> None:
        """What SetupLogger does at each process start: a file named by today's date."""
        self.close()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            day = datetime.fromtimestamp(self.clock.time()).strftime("%Y%m%d")
            self.dir_file = self.log_dir / f"log-{day}.log"
            self._files.append(self.dir_file.open("a", encoding="utf-8"))
        if self.path is not None:
            self._files.append(self.path.open("a", encoding="utf-8"))

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files.clear()

    def start_echo(self) -> None:
        """From now on write to stdout/stderr too, after the lines written so far."""
        if not self.echo:
            self.echo = True
            for stream, line in self.records:
                self._write_std(stream, line + "\n")

    def _write_std(self, stream: str, text: str) -> None:
        out = sys.stdout if stream == STDOUT else sys.stderr
        out.write(text)
        out.flush()

    def now_text(self) -> str:
        # Go formats local time without a zone.
        return datetime.fromtimestamp(self.clock.time()).strftime("%Y/%m/%d - %H:%M:%S")

    def emit(self, stream: str, text: str, *, file: bool = True) -> None:
        """One write of `text` (ending in a newline, as Fprintf writes it)."""
        line = text[:-1] if text.endswith("\n") else text
        self.records.append((stream, line))
        self.lines.append(line)
        for f in self._files if file else ():
            f.write(text)
            f.flush()
        if self.echo:
            self._write_std(stream, text)

    def sys(self, message: str, *, error: bool = False) -> None:
        """common.SysLog / SysError: `[SYS] time | message `."""
        self.emit(STDERR if error else STDOUT, f"[SYS] {self.now_text()} | {message} \n")

    def line(self, level: str, request_id: str | None, message: str) -> None:
        """common.logHelper: `[LEVEL] time | id | message ` (trailing space as in Go)."""
        stream = STDOUT if level == "INFO" else STDERR
        rid = request_id or "UNKNOWN"
        self.emit(stream, f"[{level}] {self.now_text()} | {rid} | {message} \n")

    def fatal(self, *args: str) -> None:
        """common.FatalLog(v ...any): `%v` of a slice prints `[a b]`."""
        self.emit(STDERR, f"[FATAL] {self.now_text()} | [{' '.join(args)}] \n")

    def gin(
        self, request_id: str, status: int, seconds: float, ip: str, method: str, path: str
    ) -> None:
        # middleware/logger.go: "[GIN] %s | %s | %3d | %13v | %15s | %7s %s\n"
        self.emit(
            STDOUT,
            f"[GIN] {self.now_text()} | {request_id} | {status:3d} | "
            f"{format_go_duration(seconds):>13} | {ip:>15} | {method:>7} {path}\n",
        )
