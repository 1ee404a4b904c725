"""Notifications: events (monitor.events) sent to the services operators read (Telegram,
WeCom, DingTalk, Feishu, Bark, ServerChan, Discord webhooks, email, ...) through Apprise
URLs, plus CDP's own NOTIFY_TELEGRAM_* variables. messages.py says what each event
says (zh, en); notifier.py sends; watch.py turns /status changes into events."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from monitor.config.schema import NotifyConfig
from monitor.errors import MonitorError
from monitor.metrics import Metrics
from monitor.notify.notifier import (
    Notifier,
    NotifySettings,
    Sender,
    apprise_sender,
    cdp_telegram_url,
)
from monitor.notify.watch import StatusWatch

__all__ = [
    "Notifier",
    "NotifySettings",
    "StatusWatch",
    "build_notifier",
    "notify_secrets",
    "notify_settings",
    "notify_targets",
]


def notify_targets(config: NotifyConfig, environ: Mapping[str, str]) -> list[str]:
    """The Apprise URLs to send to: the configured ones, then CDP's Telegram if set."""
    urls = [u.get_secret_value() for u in config.urls]
    cdp = cdp_telegram_url(environ) if config.cdp_env else None
    if cdp is not None and cdp not in urls:
        urls.append(cdp)
    return urls


def notify_secrets(config: NotifyConfig, environ: Mapping[str, str]) -> list[str]:
    """Values to redact from logs: every URL and CDP's bot token."""
    token = environ.get("NOTIFY_TELEGRAM_BOT_TOKEN", "").strip() if config.cdp_env else ""
    return [*notify_targets(config, environ), *([token] if token else [])]


def notify_settings(config: NotifyConfig, environ: Mapping[str, str]) -> NotifySettings:
    language = config.language
    if language == "auto":
        # CDP's users (its README is Chinese) get Chinese when CDP's variables are all we use.
        only_cdp = not config.urls and notify_targets(config, environ)
        language = "zh" if only_cdp else "en"
    return NotifySettings(
        language=language,
        period=config.period,
        timeout=config.timeout,
        kinds=frozenset(config.events),
        instance=config.instance,
    )


def build_notifier(
    config: NotifyConfig,
    *,
    environ: Mapping[str, str],
    metrics: Metrics,
    logger: logging.Logger,
    sender: Sender | None = None,
) -> Notifier | None:
    """The notifier, or None when there is nowhere to send. Configured URLs without
    Apprise installed are an error; CDP's variables alone only log a warning."""
    urls = notify_targets(config, environ)
    if not urls and sender is None:
        return None
    if sender is None:
        try:
            names = [f"actions.notify.urls[{i}]" for i in range(len(config.urls))]
            names += ["NOTIFY_TELEGRAM_BOT_TOKEN/NOTIFY_TELEGRAM_USER_ID"] * (
                len(urls) - len(names)
            )
            sender = apprise_sender(urls, names)
        except ImportError:
            hint = "notifications need Apprise: pip install 'cdp-monitor[notify]'"
            if config.urls:
                raise MonitorError(f"actions.notify.urls: {hint}") from None
            logger.warning("NOTIFY_TELEGRAM_* is set but %s", hint)
            return None
        except ValueError as exc:
            raise MonitorError(str(exc)) from None
    return Notifier(
        notify_settings(config, environ),
        sender=sender,
        metrics=metrics,
        logger=logger,
    )
