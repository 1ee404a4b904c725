"""The `cdp` section: what cdp-monitor must know of CDP's own settings (its environment),
which the reconciler's rules depend on. Defaults here are CDP's own (v4.6.5)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from monitor.config.errors import problem
from monitor.config.fields import PositiveDuration
from monitor.units import parse_duration


def _upper(value: Any) -> Any:
    if isinstance(value, str):
        stripped = value.strip().upper()
        return None if stripped == "" else stripped
    return value


def _auto_delete(value: Any) -> float | None:
    """CDP's CHANNEL_AUTO_DEL_TIME: seconds (a number or a duration); `never`, null, 0 or
    negative: CDP never deletes (chat.go:193-199)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "never"):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        return None  # CDP's own spelling of never, e.g. copied from CHANNEL_AUTO_DEL_TIME
    if isinstance(value, str) and value.strip().startswith("-"):
        return None if _NEGATIVE_NUMBER.fullmatch(value.strip()) else _bad_auto_delete()
    try:
        seconds = parse_duration(value)
    except ValueError:
        return _bad_auto_delete()
    return seconds if seconds > 0 else None


_NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?")


def _bad_auto_delete() -> float | None:
    raise problem("must be a duration (e.g. 5s), never, or CDP's 0 / negative (never)")


AutoDelete = Annotated[float | None, BeforeValidator(_auto_delete)]


class CdpConfig(BaseModel):
    """What cdp-monitor must know of CDP's own settings (its environment)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        return {} if data is None else data  # `cdp:` with every key commented out

    # CHANNEL_AUTO_DEL_TIME (unset: 5 s); null = never (CDP's 0 or negative).
    auto_delete: AutoDelete = 5.0
    # REQUEST_OUT_TIME / STREAM_REQUEST_OUT_TIME (default 5 m), the longest a request
    # waits for Coze once its channel exists.
    request_timeout: PositiveDuration = 300.0
    # CreateChannelWithRetry's 60 s per attempt (3 attempts).
    create_attempt_timeout: PositiveDuration = 60.0
    # MAX_CHANNEL_DEL_TYPE: with ALL or OLDEST CDP deletes in-use cdp-chat- channels itself
    # when the guild is full (30013).
    max_channel_del_type: Annotated[Literal["ALL", "OLDEST"] | None, BeforeValidator(_upper)] = None

    @property
    def creation_window(self) -> float:
        """The longest CDP takes to create a request's channel: 3 attempts."""
        return 3 * self.create_attempt_timeout

    @property
    def request_lifetime(self) -> float:
        """Creation window plus the reply timeout: a request is over after this."""
        return self.creation_window + self.request_timeout
