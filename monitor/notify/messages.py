"""What each event says, in Chinese and English. A template names the event's fields;
a field the emitter left out reads as "?" rather than failing the message."""

from __future__ import annotations

import math
import string
from datetime import UTC, datetime
from typing import Any

from monitor.events import Event
from monitor.units import format_duration

LANGUAGES = ("zh", "en")

# kind -> language -> (title, body). Bodies use str.format fields from the event.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "breaker_open": {
        "zh": ("熔断器已打开", "Discord 不稳定，已暂停新建频道的请求：{reason}"),
        "en": ("Breaker open", "Discord is unstable; channel-creating requests are held: {reason}"),
    },
    "breaker_half_open": {
        "zh": ("熔断器半开", "正在试探 Discord 是否恢复：{reason}"),
        "en": ("Breaker half-open", "Trying Discord again: {reason}"),
    },
    "breaker_closed": {
        "zh": ("熔断器已关闭", "Discord 已恢复，请求正常放行：{reason}"),
        "en": ("Breaker closed", "Discord recovered; requests flow again: {reason}"),
    },
    "paused": {
        "zh": ("已手动暂停", "原因：{reason}；截止：{until}"),
        "en": ("Paused by hand", "Reason: {reason}; until: {until}"),
    },
    "resumed": {
        "zh": ("已恢复", "手动暂停已结束：{reason}"),
        "en": ("Resumed", "The manual pause ended: {reason}"),
    },
    "guild_watermark": {
        "zh": ("服务器频道接近上限", "频道数 {channels}/{limit}，已超过高水位"),
        "en": ("Guild nearly full", "{channels}/{limit} channels, above the high watermark"),
    },
    "daily_creations_near_cap": {
        "zh": (
            "今日建频道数接近上限",
            "24 小时内已建 {creates}/{cap} 个频道，约 {seconds_to_cap} 后达到上限",
        ),
        "en": (
            "Daily channel creations near the cap",
            "{creates}/{cap} channels created in 24 h; the cap in about {seconds_to_cap}",
        ),
    },
    "token_invalid": {
        "zh": ("Discord 令牌无效", "Discord 返回 401，监控已停止调用 Discord，请更换令牌"),
        "en": ("Discord token invalid", "Discord answered 401; the monitor stopped calling it"),
    },
    "cloudflare_ban": {
        "zh": ("被 Cloudflare 封禁", "本机 IP 被 Cloudflare 暂时封禁，约 {seconds} 后解除"),
        "en": ("Cloudflare ban", "Cloudflare banned this IP for about {seconds}"),
    },
    "cdp_trouble": {
        "zh": ("CDP 自身出错", "{detail}"),
        "en": ("CDP trouble", "{detail}"),
    },
    "discord_unreachable": {
        "zh": ("无法连接 Discord", "{detail}"),
        "en": ("Cannot reach Discord", "{detail}"),
    },
    "reconcile_deleted": {
        "zh": ("已清理泄漏频道", "一次清理删除了 {deleted} 个频道（运行 {run_id}）"),
        "en": (
            "Leaked channels deleted",
            "One reconcile run deleted {deleted} channels ({run_id})",
        ),
    },
}
_DURATION_FIELDS = frozenset({"seconds", "seconds_to_cap"})
_TIME_FIELDS = frozenset({"until", "at"})


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        if key in _DURATION_FIELDS:
            return format_duration(round(float(value)))
        if key in _TIME_FIELDS:
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def render(event: Event, language: str, instance: str = "") -> tuple[str, str]:
    """(title, body) of `event` in `language`; `instance` names the daemon if set."""
    title, body = TEMPLATES[event.kind][language]
    values = _Missing({k: _shown(k, v) for k, v in event.fields.items()})
    text = string.Formatter().vformat(body, (), values)
    prefix = f"[{instance}] " if instance else ""
    return f"{prefix}cdp-monitor: {title}", text
