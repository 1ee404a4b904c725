"""Attribution of a channel-creating request's outcome (DESIGN section 7): whether CDP's
answer is evidence about Discord's channel creation, and if not, which of CDP's own
troubles it was.

Only evidence of Discord makes a health sample:

- a success: CDP got its channel, so Discord created one (a healthy sample);
- HTTP 500 whose `error.message` is exactly `config error,check logs`: CDP's chat
  handler answers that for every error of `CreateChannelWithRetry` and nothing else
  (coze-discord-proxy `controller/chat.go:168-188`; model and bot lookups have their
  own messages);
- `POST /api/channel/create` answered 200 `{"success":false,"message":
  "discord创建频道异常"}`: the handler's only failure after decoding the body is the
  error of discordgo's `GuildChannelCreate` (`controller/channel.go:22-59`,
  `discord/channel.go:74-81`), the same call the chat path wraps into `config error,check
  logs`, so it is Discord evidence of the same weight.

Everything else (no user token, no bot, bad JSON, Coze's own error text, a failed
prompt post, CDP's rate limit, ...) is counted by kind (`CDP_ERROR_KINDS`) and is no
sample: it says nothing about Discord creating channels. The images route answers a
bare `config error` for channel, model and bot errors alike (`chat.go:520-531`), so it
is counted as `config_error` and left to CDP's log to attribute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# CDP's exact texts (coze-discord-proxy v4.6.5).
CREATE_FAILED = "config error,check logs"
CHANNEL_API_CREATE_FAILED = "discord创建频道异常"
CHANNEL_API_PATH = "/api/channel/create"

# error.message of a 500 → kind; messages not listed are Coze's own text (`coze_error`).
_MESSAGE_KINDS = {
    "no_available_user_auth": "no_available_user_auth",
    "model_not_found": "model_not_found",
    "no_available_bot": "no_available_bot",
    "Invalid request parameters": "invalid_request",
    "Image URL parsing error": "invalid_request",
    "Message format error": "invalid_request",
    "error sending message": "error_sending_message",
    "config error": "config_error",
    "Failed to fetch image URL, please try again later.": "image_fetch_failed",
}
_PROMPT_TOO_LONG = "prompt已超过限制"
# Statuses CDP answers before doing anything: its auth (401), its per-IP rate limit
# (429), a bad `out-time` header (400), an unknown route (404).
_STATUS_KINDS = {
    400: "invalid_request",
    401: "unauthorized",
    404: "invalid_request",
    429: "rate_limited",
}

# Bytes of an answer read to attribute it. CDP's error bodies are a few hundred bytes.
PEEK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Attribution:
    """`sample`: the Discord health sample (True healthy, False a Discord failure, None
    none); `kind`: CDP's own trouble, counted in `cdpmon_cdp_errors_total{kind}`."""

    sample: bool | None
    kind: str | None = None


HEALTHY = Attribution(True)
DISCORD_FAILED = Attribution(False)


def needs_body(path: str, status: int) -> bool:
    """Whether :func:`attribute` must see the answer's body (an error, or the channel
    API's 200 that may say `success:false`)."""
    return status >= 400 or (status == 200 and path.rstrip("/") == CHANNEL_API_PATH)


def attribute(path: str, status: int, body: bytes) -> Attribution:
    """Attribute CDP's answer (`status`, the first bytes of `body`) to a create on `path`."""
    if status < 400:
        if path.rstrip("/") == CHANNEL_API_PATH and status == 200:
            return _channel_api(body)
        return HEALTHY
    if status != 500:
        return Attribution(None, _STATUS_KINDS.get(status, "other"))
    message = _error_message(body)
    if message is None:
        return Attribution(None, "other")
    if message == CREATE_FAILED:
        return DISCORD_FAILED
    kind = _MESSAGE_KINDS.get(message)
    if kind is None:
        kind = "prompt_too_long" if message.startswith(_PROMPT_TOO_LONG) else "coze_error"
    return Attribution(None, kind)


def _decode(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:  # not JSON, or cut off at PEEK
        return None


def _error_message(body: bytes) -> str | None:
    """`error.message` of CDP's OpenAI-style error body, None for any other body."""
    data = _decode(body)
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


def _channel_api(body: bytes) -> Attribution:
    data = _decode(body)
    if not isinstance(data, dict):
        return Attribution(None, "other")
    if data.get("success") is not False:
        return HEALTHY
    if data.get("message") == CHANNEL_API_CREATE_FAILED:
        return DISCORD_FAILED
    return Attribution(None, "invalid_request")  # `无效的参数`: the body did not decode
