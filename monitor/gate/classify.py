"""Which requests CDP would create a Discord channel for (DESIGN section 7)."""

from __future__ import annotations

import json

CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/images/generations"})
EXPLICIT_CREATE_PATHS = frozenset({"/api/channel/create", "/api/thread/create"})


def is_create_request(method: str, path: str, body: bytes, *, cdp_default_channel: bool) -> bool:
    """Whether CDP would create a channel for this request (DESIGN section 7)."""
    if method != "POST":
        return False
    path = path.rstrip("/") or "/"
    if path in EXPLICIT_CREATE_PATHS:
        return True
    if path not in CHAT_PATHS or cdp_default_channel:
        return False
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return True  # CDP will fail on it; if it does not, it creates a channel
    if not isinstance(data, dict):
        return True
    channel_id = data.get("channelId")
    return not (isinstance(channel_id, str | int) and str(channel_id).strip())
