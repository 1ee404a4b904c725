"""Cloudflare's IP ban: telling its 429 from Discord's own, and keeping every call of a
client away from Discord while it lasts.

Cloudflare, in front of Discord, bans an IP that sends too many invalid requests (401,
403, 429) for about an hour; its 429 is text or HTML (``error code: 1015``) without
Discord's ``Via: 1.1 google`` and without rate-limit headers. Retrying it, or calling
other routes, only prolongs the ban, for us and for CDP behind the same IP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from monitor.clock import Clock
from monitor.discord.ratelimit import float_or_none
from monitor.errors import DiscordCloudflareBan

# How long a ban lasts when its answer carries no Retry-After: Discord documents the IP
# ban for too many invalid requests as about an hour.
CLOUDFLARE_BAN_DEFAULT = 3600.0


def is_cloudflare_ban(headers: Mapping[str, str], body: bytes) -> bool:
    """A 429 Discord did not make: no ``Via`` header and no JSON object body.

    discord.py draws the same line (discord/http.py: a 429 without ``Via`` or whose body
    is not JSON is "banned by Cloudflare", raised at once). A JSON body alone still counts
    as Discord's, so a proxy that strips ``Via`` cannot turn every rate limit into an
    hour-long stop.
    """
    if "Via" in headers:
        return False
    try:
        return not isinstance(json.loads(body), dict)
    except ValueError:
        return True


def ban_length(headers: Mapping[str, str]) -> float:
    """Seconds a ban lasts: its ``Retry-After`` when it has a positive one, else the default."""
    said = float_or_none(headers.get("Retry-After"))
    return said if said is not None and 0 < said < math.inf else CLOUDFLARE_BAN_DEFAULT


class BanGate:
    """One client's ban state, on the client's monotonic clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.until = 0.0

    def left(self) -> float:
        """Seconds left of the ban (0: not banned)."""
        return max(0.0, self.until - self._clock.monotonic())

    def start(self, headers: Mapping[str, str], **kw: Any) -> DiscordCloudflareBan:
        """A ban answer arrived: the error to raise (``kw``: the answer's code, message,
        route, method)."""
        seconds = ban_length(headers)
        self.until = max(self.until, self._clock.monotonic() + seconds)
        return DiscordCloudflareBan(until=self.until, retry_after=seconds, **kw)

    def refuse(self, method: str, route: str) -> None:
        """Raise without sending while banned."""
        left = self.left()
        if left > 0:
            raise DiscordCloudflareBan(
                until=self.until,
                retry_after=left,
                message=f"Cloudflare ban: not calling Discord for another {left:.0f}s",
                route=route,
                method=method,
            )
