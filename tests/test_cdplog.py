"""CDP log signal: the parser on real line formats, the followers on real files and
processes, and the metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, FakeClock
from monitor.health.cdplog import (
    CdpLogEvent,
    CdpLogSignal,
    CreateFailure,
    CreateRetry,
    RequestOutcome,
    parse_go_duration,
    parse_line,
)
from monitor.health.follow import backoff_delay, follow_command, follow_file, follow_newest
from monitor.health.window import Sample
from monitor.metrics import Metrics
from tests.helpers.metrics import sample, sample_or_zero
from tests.helpers.wait import wait_for

BOUND = 10.0  # generous upper bound on waiting for an iterator, never a timing assertion

# --- parser ---------------------------------------------------------------------------


def test_retry_line_with_attempt_number() -> None:
    line = (
        "[WARN] 2024/05/01 - 12:34:56 | 1785412345678901248 | "
        "Create channel timed out, retrying...1 "
    )
    assert parse_line(line) == CreateRetry(
        request_id="1785412345678901248",
        attempt=1,
        logged_at=datetime(2024, 5, 1, 12, 34, 56),
    )


def test_retry_line_of_older_versions_has_no_number() -> None:
    line = "[WARN] 2024/02/03 - 01:02:03 | abc123 | Create channel timed out, retrying... "
    assert parse_line(line) == CreateRetry(
        request_id="abc123", attempt=None, logged_at=datetime(2024, 2, 3, 1, 2, 3)
    )


def test_retry_line_with_ansi_colours_and_chinese_text() -> None:
    line = (
        "\x1b[33m[WARN]\x1b[0m 2024/05/01 - 12:34:56 | 42 | "
        "Create channel timed out, retrying...\x1b[1m2\x1b[0m 请稍候\r\n"
    )
    event = parse_line(line)
    assert isinstance(event, CreateRetry)
    assert (event.request_id, event.attempt) == ("42", 2)


def test_retry_line_after_a_docker_timestamp_without_request_id() -> None:
    # `docker logs -t` puts an RFC 3339 timestamp first; UNKNOWN is CDP's "no id".
    line = (
        "2024-05-01T12:00:00.123456789Z [WARN] 2024/05/01 - 12:00:00 | UNKNOWN | "
        "Create channel timed out, retrying...0 "
    )
    assert parse_line(line) == CreateRetry(
        request_id=None, attempt=0, logged_at=datetime(2024, 5, 1, 12)
    )


def test_failure_after_attempts_is_timeout() -> None:
    line = (
        "[ERR] 2024/05/01 - 12:37:56 | 1785412345678901248 | "
        "failed after 3 attempts due to timeout, please reset BOT_TOKEN "
    )
    assert parse_line(line) == CreateFailure(
        reason="timeout",
        request_id="1785412345678901248",
        logged_at=datetime(2024, 5, 1, 12, 37, 56),
    )


def test_older_versions_retried_on_errors() -> None:
    # CDP v4.3.6-v4.3.8: an error is one failed attempt (the request may still succeed).
    line = (
        "[WARN] 2024/05/01 - 12:00:00 | 77 | Failed to create channel, error: "
        'HTTP 400 Bad Request, {"message": "Maximum number of server channels reached (500)",'
        ' "code": 30013}'
    )
    assert parse_line(line) == CreateRetry("77", None, datetime(2024, 5, 1, 12))


def test_older_failure_wording_is_retries_exhausted() -> None:
    line = (
        "[ERR] 2024/01/01 - 00:00:00 | r1 | "
        "failed to create channel after 3 attempts, please reset BOT_TOKEN"
    )
    assert parse_line(line) == CreateFailure(
        reason="retries_exhausted", request_id="r1", logged_at=datetime(2024, 1, 1)
    )


@pytest.mark.parametrize(
    "line",
    [
        "[ERR] 2024/05/01 - 12:00:00 | 77 | 创建频道时异常 "
        'HTTP 400 Bad Request, {"message": "Maximum number of server channels reached (500)",'
        ' "code": 30013}',
        '[ERR] 2024/05/01 - 12:00:00 | 77 | HTTP 400 Bad Request, {"message": '
        '"Maximum number of server channels reached (500)", "code": 30013} ',
        "[ERR] 2024/05/01 - 12:00:00 | 77 | 当前Discord服务器频道已满，且无CDP临时频道可删除 ",
        "\x1b[31m[ERR]\x1b[0m 2024/05/01 - 12:00:00 | 77 | "
        "Maximum number of guild channels reached (500)",
    ],
)
def test_channel_limit_lines(line: str) -> None:
    event = parse_line(line)
    assert isinstance(event, CreateFailure)
    assert event.reason == "limit_30013"
    assert event.request_id == "77"


def test_gin_line_with_cdp_padding() -> None:
    # middleware/logger.go: "[GIN] %s | %s | %3d | %13v | %15s | %7s %s"
    line = (
        "[GIN] 2024/05/01 - 12:37:56 | 1785412345678901248 | 500 |          3m0s |"
        "       127.0.0.1 |    POST /v1/chat/completions\n"
    )
    event = parse_line(line)
    assert event == RequestOutcome(
        request_id="1785412345678901248",
        status=500,
        duration=180.0,
        client_ip="127.0.0.1",
        method="POST",
        path="/v1/chat/completions",
        logged_at=datetime(2024, 5, 1, 12, 37, 56),
    )
    assert event.creates_channel and event.failed


def test_gin_line_success_and_non_creating_paths() -> None:
    ok = parse_line(
        "[GIN] 2024/05/01 - 12:00:00 | 9 | 200 |   1.234567s |  10.0.0.5 |"
        "    POST /api/channel/create"
    )
    assert isinstance(ok, RequestOutcome)
    assert ok.creates_channel and not ok.failed
    assert ok.duration == pytest.approx(1.234567)

    models = parse_line("[GIN] 2024/05/01 - 12:00:00 | 9 | 502 | 250ms | ::1 |     GET /v1/models")
    assert isinstance(models, RequestOutcome)
    assert models.status == 502 and models.client_ip == "::1"
    assert not models.creates_channel and not models.failed


def test_gin_line_without_request_id_and_with_colours() -> None:
    line = (
        "\x1b[32m[GIN]\x1b[0m 2024/05/01 - 12:00:00 |  | \x1b[97;41m503\x1b[0m |"
        " 12.5µs | 1.2.3.4 | POST /v1/images/generations"
    )
    event = parse_line(line)
    assert isinstance(event, RequestOutcome)
    assert event.request_id is None
    assert event.status == 503 and event.failed
    assert event.duration == pytest.approx(12.5e-6)


def test_snowflake_request_id_containing_30013_is_not_a_limit() -> None:
    line = "[INFO] 2024/05/01 - 12:00:00 | 1785430013901248 | attempts to reply: 1"
    assert parse_line(line) is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "[SYS] 2024/05/01 - 12:00:00 | Discord bot is running ",
        "[INFO] 2024/05/01 - 12:00:00 | 123 | 对话完成 ",
        "[GIN-debug] POST   /v1/chat/completions      --> main.handler (4 handlers)",
        "some random text from another program",
        "\x1b[0m\x1b[32mcolourful but irrelevant\x1b[0m",
    ],
)
def test_unknown_lines_are_none(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3m0s", 180.0),
        ("1.234s", 1.234),
        ("250ms", 0.25),
        ("12.5µs", 12.5e-6),
        ("12.5μs", 12.5e-6),
        ("800ns", 800e-9),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("0", 0.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3", "1.5x", "s", "1 s", "-1s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


# --- signal ---------------------------------------------------------------------------


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_signal_counts_metrics_and_feeds_sink() -> None:
    metrics = Metrics(CollectorRegistry())
    events: list[CdpLogEvent] = []
    signal = CdpLogSignal(metrics=metrics, sink=events.append)
    await signal.consume(
        _lines(
            "[WARN] 2024/05/01 - 12:00:00 | a | Create channel timed out, retrying...0",
            "[WARN] 2024/05/01 - 12:01:00 | a | Create channel timed out, retrying...1",
            "[INFO] 2024/05/01 - 12:01:00 | a | irrelevant",
            "[ERR] 2024/05/01 - 12:03:00 | a | "
            "failed after 3 attempts due to timeout, please reset BOT_TOKEN",
            '[ERR] 2024/05/01 - 12:03:00 | b | HTTP 400 Bad Request, {"message": "Maximum number'
            ' of server channels reached (500)", "code": 30013} ',
            "[GIN] 2024/05/01 - 12:03:00 | a | 500 | 3m0s | 127.0.0.1 | POST /v1/chat/completions",
        )
    )
    assert sample_or_zero(metrics.registry, "cdpmon_cdp_channel_create_retries_total") == 2
    assert (
        sample_or_zero(
            metrics.registry, "cdpmon_cdp_channel_create_failures_total", reason="timeout"
        )
        == 1
    )
    assert (
        sample_or_zero(
            metrics.registry, "cdpmon_cdp_channel_create_failures_total", reason="limit_30013"
        )
        == 1
    )
    # Failure reasons are exported from the start, at zero.
    assert (
        sample(
            metrics.registry, "cdpmon_cdp_channel_create_failures_total", reason="retries_exhausted"
        )
        == 0
    )
    assert [type(e).__name__ for e in events] == [
        "CreateRetry",
        "CreateRetry",
        "CreateFailure",
        "CreateFailure",
        "RequestOutcome",
    ]
    assert (signal.lines_seen, signal.events_seen) == (6, 5)
    # Retry and failure lines are failure samples; request lines leave that to the gate.
    failure = Sample("cdplog", 100.0, ok=False)
    assert [e.sample(100.0) for e in events] == [failure] * 4 + [None]


async def test_signal_survives_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    seen: list[CdpLogEvent] = []

    def sink(event: CdpLogEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("boom")

    retry = "[WARN] 2024/05/01 - 12:00:00 | a | Create channel timed out, retrying...1"
    signal = CdpLogSignal(metrics=metrics, sink=sink, logger=logging.getLogger("test.cdplog"))
    with caplog.at_level(logging.ERROR, logger="test.cdplog"):
        await signal.consume(_lines(retry, retry))
    assert len(seen) == 2
    assert sample_or_zero(metrics.registry, "cdpmon_cdp_channel_create_retries_total") == 2
    assert "CDP log signal failed" in caplog.text


# --- follow_file ----------------------------------------------------------------------


class CountingClock:
    """Real sleeps, counted: lets a test wait until the follower has looked once."""

    def __init__(self) -> None:
        self.sleeps = 0

    def time(self) -> float:
        return SYSTEM_CLOCK.time()

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await SYSTEM_CLOCK.sleep(seconds)


async def _next(it: AsyncIterator[str]) -> str:
    return await asyncio.wait_for(anext(it), BOUND)


async def _first_look(it: AsyncIterator[str], clock: CountingClock) -> asyncio.Task[str]:
    """Start pulling from `it` and return once the follower has polled at least once."""
    task = asyncio.ensure_future(_next(it))
    await wait_for(lambda: clock.sleeps > 0, what="the follower's first look", bound=BOUND)
    return task


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


async def test_follow_file_starts_at_end_and_survives_rotation_and_truncation(
    tmp_path: Path,
) -> None:
    log = tmp_path / "cdp.log"
    log.write_text("old line before we started\n", encoding="utf-8")
    clock = CountingClock()
    async with aclosing(follow_file(log, clock=clock, poll_interval=0.01)) as lines:
        pending = await _first_look(lines, clock)
        _append(log, "first\nsec")
        assert await pending == "first"
        _append(log, "ond\n")
        assert await _next(lines) == "second"

        # Rotation: a line written to the old file just before the move is not lost.
        _append(log, "last of old file\n")
        os.rename(log, tmp_path / "cdp.log.1")
        log.write_text("new file line 1, long enough to outgrow what follows\n", encoding="utf-8")
        assert await _next(lines) == "last of old file"
        assert await _next(lines) == "new file line 1, long enough to outgrow what follows"

        # Truncation (copytruncate): shorter content than what we had read.
        log.write_text("", encoding="utf-8")
        log.write_text("after truncate\n", encoding="utf-8")
        assert await _next(lines) == "after truncate"
        _append(log, "日志 中文 ok\n")
        assert await _next(lines) == "日志 中文 ok"


async def test_follow_file_waits_for_missing_file_then_reads_from_start(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    clock = CountingClock()
    async with aclosing(follow_file(log, clock=clock, poll_interval=0.01)) as lines:
        pending = await _first_look(lines, clock)
        log.write_text("written before the follower opened it\nsecond\n", encoding="utf-8")
        assert await pending == "written before the follower opened it"
        assert await _next(lines) == "second"


async def test_follow_newest_switches_to_the_log_dir_file_of_a_new_start(tmp_path: Path) -> None:
    # CDP's --log-dir: log-<start date>.log, opened once per start (common/init.go).
    first = tmp_path / "log-20240501.log"
    first.write_text("[SYS] 2024/05/01 - 09:00:00 | old, before we started \n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a log\n", encoding="utf-8")
    clock = CountingClock()
    pattern = str(tmp_path / "log-*.log")
    async with aclosing(follow_newest(pattern, clock=clock, poll_interval=0.01)) as lines:
        pending = await _first_look(lines, clock)
        _append(first, "day one\n")
        assert await pending == "day one"
        # CDP restarts on another day: its last line in the old file is not lost, and the
        # new file is read from its start.
        _append(first, "last words of the old process\n")
        second = tmp_path / "log-20240502.log"
        second.write_text("[SYS] 2024/05/02 - 00:10:00 | COZE-DISCORD-PROXY v4.6.5 started \n")
        assert await _next(lines) == "last words of the old process"
        assert (
            await _next(lines) == "[SYS] 2024/05/02 - 00:10:00 | COZE-DISCORD-PROXY v4.6.5 started "
        )
        _append(second, "day two\n")
        assert await _next(lines) == "day two"
        # The old file is no longer followed (GIN lines after a 1M-line reopen stay there).
        _append(first, "stale\n")
        _append(second, "still day two\n")
        assert await _next(lines) == "still day two"


async def test_follow_newest_waits_for_the_first_file(tmp_path: Path) -> None:
    clock = CountingClock()
    pattern = str(tmp_path / "log-*.log")
    async with aclosing(follow_newest(pattern, clock=clock, poll_interval=0.01)) as lines:
        pending = await _first_look(lines, clock)
        (tmp_path / "log-20240501.log").write_text("first start\n", encoding="utf-8")
        assert await pending == "first start"


# --- follow_command -------------------------------------------------------------------


def test_backoff_doubles_and_caps() -> None:
    delays = [backoff_delay(n, initial=1.0, maximum=10.0) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(10_000, initial=1.0, maximum=10.0) == 10.0


async def test_follow_command_restarts_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()  # backoff sleeps advance it instantly
    argv = ["sh", "-c", "echo line; echo to-stderr >&2; exit 3"]
    got: list[str] = []
    with caplog.at_level(logging.WARNING, logger="test.follow"):
        it = follow_command(
            argv, clock=clock, backoff_base=1.0, logger=logging.getLogger("test.follow")
        )
        async with aclosing(it) as lines:
            for _ in range(6):
                got.append(await _next(lines))
    assert got == ["line", "to-stderr"] * 3
    # Three runs, two restarts in between: 1s then 2s of backoff.
    assert clock.monotonic() == pytest.approx(3.0)
    assert "exited with status 3; restarting in 1s" in caplog.text
    assert "restarting in 2s" in caplog.text


async def test_follow_command_restarts_after_clean_exit_too() -> None:
    clock = FakeClock()
    async with aclosing(
        follow_command(["sh", "-c", "echo line; exit 0"], clock=clock, backoff_base=0.5)
    ) as lines:
        assert [await _next(lines) for _ in range(2)] == ["line", "line"]
    assert clock.monotonic() == pytest.approx(0.5)


async def test_follow_command_terminates_the_command_on_close(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; echo ready; exec sleep 600"
    async with aclosing(
        follow_command(["sh", "-c", script], clock=FakeClock(), backoff_base=1.0)
    ) as lines:
        assert await _next(lines) == "ready"
        pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_follow_command_that_cannot_start_keeps_retrying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    missing = str(tmp_path / "no-such-command")

    async def pull() -> None:
        async for _ in follow_command(
            [missing], clock=clock, backoff_base=1.0, logger=logging.getLogger("t.m")
        ):
            pass

    with caplog.at_level(logging.WARNING, logger="t.m"):
        task = asyncio.ensure_future(pull())
        await wait_for(
            lambda: clock.monotonic() >= 1 + 2 + 4, what="three restarts", bound=BOUND, interval=0
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "cannot start log command" in caplog.text
    assert "restarting in 4s" in caplog.text


@pytest.mark.skipif(sys.platform == "win32", reason="uses sh")
async def test_follow_command_feeds_the_signal() -> None:
    metrics = Metrics(CollectorRegistry())
    events: list[CdpLogEvent] = []
    signal = CdpLogSignal(metrics=metrics, sink=events.append)
    script = (
        "echo '[WARN] 2024/05/01 - 12:00:00 | r | Create channel timed out, retrying...1' >&2; "
        "echo '[GIN] 2024/05/01 - 12:00:01 | r | 200 | 5ms | 127.0.0.1 | GET /v1/models'"
    )
    async with aclosing(
        follow_command(["sh", "-c", script], clock=FakeClock(), backoff_base=1.0)
    ) as lines:
        for _ in range(2):
            signal.handle_line(await _next(lines))
    assert sample_or_zero(metrics.registry, "cdpmon_cdp_channel_create_retries_total") == 1
    assert [type(e).__name__ for e in events] == ["CreateRetry", "RequestOutcome"]
