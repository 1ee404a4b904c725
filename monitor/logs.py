"""Logging: text or JSON lines, with secrets redacted from every record."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

LOGGER_NAME = "cdp-monitor"
_V = TypeVar("_V")


class RedactFilter(logging.Filter):
    """Replaces any configured secret in a record's final message with `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
            if record.exc_info:
                # Tracebacks can quote a secret too (an exception's message, a local repr).
                text = logging.Formatter().formatException(record.exc_info)
                record.exc_text, record.exc_info = self.redact(text), None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


_REDACT = RedactFilter(())


def redact(value: _V) -> _V:
    """`value` (text, or JSON-ready lists and dicts of it) with every configured secret
    replaced by `***`: for what we answer or print, where Discord or a proxy may have
    echoed the token back into an error message."""
    if isinstance(value, str):
        return _REDACT.redact(value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace what every log record is redacted of (config reload with a new token)."""
    _REDACT.secrets = [s for s in secrets if s and len(s) >= 4]


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> logging.Logger:
    """Configure the root handler once; calling again (reload) replaces it."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    set_secrets(secrets)
    handler.addFilter(_REDACT)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return logging.getLogger(LOGGER_NAME)
