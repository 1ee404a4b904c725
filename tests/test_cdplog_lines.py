"""CDP's log lines as v4.6.5 writes them (CDP-FACTS.md sections 5 and M2), byte for byte,
each turned into its event; the same texts inside a prompt turned into nothing; the
subscription API by request id; the restart and CDP-error metrics."""

from __future__ import annotations

from datetime import datetime

import pytest
from prometheus_client import CollectorRegistry

from monitor.health.cdplog import (
    CdpLogEvent,
    CdpLogSignal,
    CdpStarted,
    CdpTrouble,
    CreateFailure,
    CreateRetry,
    RequestOutcome,
    parse_line,
)
from monitor.metrics import Metrics
from monitor.vocab import CDP_ERROR_KINDS, CDP_FAILURE_REASONS
from tests.helpers.metrics import sample, sample_or_zero

RID = "202405011200001234567AbCdEfGh"
TS = "2024/05/01 - 12:00:00"
AT = datetime(2024, 5, 1, 12)
GID = "1100000000000000001"


def err(message: str, rid: str = RID) -> str:
    # common/logger.go: "[%s] %v | %s | %s \n" (the follower strips the newline).
    return f"[ERR] {TS} | {rid} | {message} "


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("failed after 3 attempts due to timeout, please reset BOT_TOKEN", "timeout"),
        ('HTTP 403 Forbidden, {"message": "Missing Permissions", "code": 50013}', "forbidden"),
        (
            f'Post "https://discord.com/api/v9/guilds/{GID}/channels": context deadline exceeded'
            " (Client.Timeout exceeded while awaiting headers)",
            "http_timeout",
        ),
        (
            f'Post "https://discord.com/api/v9/guilds/{GID}/channels": dial tcp 162.159.128.233:443'
            ": connect: connection refused",
            "network",
        ),
        (
            'Exceeded Max retries HTTP 502 Bad Gateway, {"message": "502: Bad Gateway", "code": 0}',
            "bad_gateway",
        ),
        (
            'HTTP 500 Internal Server Error, {"message": "500: Internal Server Error"}',
            "server_error",
        ),
        ('HTTP 404 Not Found, {"message": "Unknown Guild", "code": 10004}', "http_error"),
        (
            'HTTP 400 Bad Request, {"message": "Maximum number of server channels reached (500)",'
            ' "code": 30013}',
            "limit_30013",
        ),
        # Issue #45's form (the /api/channel/create route logs it with this prefix).
        (
            '创建频道时异常 HTTP 400 Bad Request, {"message": "Maximum number of server channels '
            'reached (500)", "code": 30013}',
            "limit_30013",
        ),
        # MAX_CHANNEL_DEL_TYPE set, but nothing to purge (channel.go:149).
        ("当前Discord服务器频道已满，且无CDP临时频道可删除", "limit_30013"),
        # CDP v4.3.6-v4.3.8 only (kept as a legacy reason).
        ("failed to create channel after 3 attempts, please reset BOT_TOKEN", "retries_exhausted"),
    ],
)
def test_every_create_failure_line(message: str, reason: str) -> None:
    assert reason in CDP_FAILURE_REASONS
    assert parse_line(err(message)) == CreateFailure(reason=reason, request_id=RID, logged_at=AT)


def test_the_third_retry_line_counts_too() -> None:
    # channel.go:158 logs every timeout, the 3rd included, with a trailing space.
    lines = [f"[WARN] {TS} | {RID} | Create channel timed out, retrying...{n} " for n in (1, 2, 3)]
    assert [parse_line(line) for line in lines] == [
        CreateRetry(request_id=RID, attempt=n, logged_at=AT) for n in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("line", "kind", "rid", "channel_id"),
    [
        (
            f'[ERR] {TS} | UNKNOWN | 删除频道时异常 HTTP 404 Not Found, {{"message": "Unknown '
            'Channel", "code": 10003} ',
            "delete_failed",
            None,
            None,
        ),
        (
            f"[WARN] {TS} | {RID} | 频道数量已满-自动删除频道Id 1234567890123456789 ",
            "purge",
            RID,
            "1234567890123456789",
        ),
        (
            f"[ERR] {TS} | {RID} | 频道数量已满-删除频道异常(可能原因:对话请求频道已被自动删除) "
            'HTTP 404 Not Found, {"message": "Unknown Channel", "code": 10003} ',
            "guild_full",
            RID,
            None,
        ),
        (
            f"[ERR] {TS} | {RID} | error sending message: HTTP 401 Unauthorized ",
            "user_token",
            RID,
            None,
        ),
        (f"[WARN] {TS} | {RID} | USER_AUTHORIZATION:mfa.abc EXPIRED ", "user_token", RID, None),
        (f"[WARN] {TS} | {RID} | USER_AUTHORIZATION:mfa.abc DAILY LIMIT ", "user_token", RID, None),
        (f"[ERR] {TS} | {RID} | 无可用的 user_auth ", "user_token", RID, None),
        (f"[FATAL] {TS} | [环境变量 BOT_TOKEN 未设置] ", "fatal", None, None),
        (
            "2024/05/01 12:00:00 [DG0] wsapi.go:735:heartbeat() haven't gotten a heartbeat ACK "
            "in 2m0.5s, triggering a reconnection",
            "gateway",
            None,
            None,
        ),
    ],
)
def test_cdp_side_trouble_lines(
    line: str, kind: str, rid: str | None, channel_id: str | None
) -> None:
    assert kind in CDP_ERROR_KINDS
    event = parse_line(line)
    assert isinstance(event, CdpTrouble)
    assert (event.kind, event.request_id, event.channel_id) == (kind, rid, channel_id)
    assert event.sample(0.0) is None  # never a sample about Discord


def test_start_lines() -> None:
    started = parse_line(f"[SYS] {TS} | COZE-DISCORD-PROXY v4.6.5 started ")
    assert started == CdpStarted(version="v4.6.5", logged_at=AT)
    # The bot's own start follows the process start: one restart, not two.
    assert parse_line(f"[SYS] {TS} | Bot is now running. Enjoy It. ") is None


def test_gin_line_keeps_working() -> None:
    line = (
        f"[GIN] {TS} | {RID} | 500 |          3m0s |       127.0.0.1 |    POST /v1/chat/completions"
    )
    event = parse_line(line)
    assert isinstance(event, RequestOutcome) and event.failed and event.duration == 180.0


@pytest.mark.parametrize(
    "prefix",
    [
        "2024-05-01T04:00:00.123456789Z ",  # docker logs -t
        "May 01 12:00:00 host cdp[4242]: ",  # journalctl -o short
        "May  1 12:00:00 host coze-discord-proxy: ",
    ],
)
def test_docker_and_journald_prefixes(prefix: str) -> None:
    line = prefix + err("failed after 3 attempts due to timeout, please reset BOT_TOKEN")
    assert parse_line(line) == CreateFailure(reason="timeout", request_id=RID, logged_at=AT)
    assert parse_line(prefix + f"[SYS] {TS} | COZE-DISCORD-PROXY v4.6.5 started ") == CdpStarted(
        "v4.6.5", AT
    )


@pytest.mark.parametrize(
    "line",
    [
        # discord.go:526 logs the whole prompt; its own newlines start unprefixed lines.
        "failed after 3 attempts due to timeout, please reset BOT_TOKEN",
        "Create channel timed out, retrying...1",
        "Create channel timed out, retrying...1 ",
        '  HTTP 403 Forbidden, {"message": "Missing Permissions", "code": 50013}',
        "COZE-DISCORD-PROXY v4.6.5 started",
        "频道数量已满-自动删除频道Id 1234567890123456789",
        "删除频道时异常 HTTP 404 Not Found",
        "tell me why [ERR] 2024/05/01 - 12:00:00 | x | failed after 3 attempts due to timeout",
        # The prompt line itself: an ERR line whose message is not a create error.
        f"[ERR] {TS} | {RID} | prompt已超过限制,请分段发送 [9000] please say "
        "failed after 3 attempts due to timeout and Create channel timed out, retrying...1 ",
        # A docker timestamp, then prompt text.
        "2024-05-01T04:00:00Z failed after 3 attempts due to timeout, please reset BOT_TOKEN",
    ],
)
def test_text_inside_a_prompt_is_never_a_signal(line: str) -> None:
    assert parse_line(line) is None


def test_subscribers_by_request_id_and_metrics() -> None:
    metrics = Metrics(CollectorRegistry())
    signal = CdpLogSignal(metrics=metrics)
    everything: list[CdpLogEvent] = []
    mine: list[CdpLogEvent] = []
    signal.subscribe(everything.append)
    unsubscribe = signal.subscribe(mine.append, request_id=RID.upper())
    lines = [
        f"[WARN] {TS} | {RID} | Create channel timed out, retrying...1 ",
        err("failed after 3 attempts due to timeout, please reset BOT_TOKEN", rid="other"),
        err("failed after 3 attempts due to timeout, please reset BOT_TOKEN"),
        f"[SYS] {TS} | COZE-DISCORD-PROXY v4.6.5 started ",
        f"[ERR] {TS} | {RID} | error sending message: EOF ",
    ]
    for line in lines:
        signal.handle_line(line)
    assert len(everything) == 5
    assert [type(e).__name__ for e in mine] == ["CreateRetry", "CreateFailure", "CdpTrouble"]
    unsubscribe()
    signal.handle_line(lines[0])
    assert len(mine) == 3 and len(everything) == 6
    r = metrics.registry
    assert sample_or_zero(r, "cdpmon_cdp_restarts_total") == 1
    assert sample_or_zero(r, "cdpmon_cdp_channel_create_retries_total") == 2
    assert sample(r, "cdpmon_cdp_channel_create_failures_total", reason="timeout") == 2
    assert sample(r, "cdpmon_cdp_errors_total", kind="user_token") == 1
    assert sample(r, "cdpmon_cdp_errors_total", kind="purge") == 0  # exported at zero


def test_a_403_is_no_sample_about_discord() -> None:
    forbidden = parse_line(err('HTTP 403 Forbidden, {"message": "Missing Permissions"}'))
    timeout = parse_line(err("failed after 3 attempts due to timeout, please reset BOT_TOKEN"))
    assert forbidden is not None and forbidden.sample(1.0) is None
    assert timeout is not None and timeout.sample(1.0) is not None
