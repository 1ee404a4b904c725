"""The bytes of the simulator's answers, as Discord sends them: JSON with exactly
`Content-Type: application/json` (aiohttp's `json_response` would add `; charset=utf-8`,
which discord.py compares literally), `Via: 1.1 google` on everything Discord's own
servers make (discord.py takes a 429 without it for a Cloudflare ban), error bodies
`{"message", "code"[, "errors"]}`, 429 bodies, and Cloudflare's own answers (no `Via`)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

VIA = "1.1 google"


class Answer(Exception):
    """A complete answer a handler gives from deep inside (the middleware sends it)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response
        super().__init__("answer")


def discord_json(body: Any, status: int = 200) -> web.Response:
    """A JSON answer from Discord's API servers."""
    response = web.Response(status=status, body=json.dumps(body).encode())
    response.headers["Content-Type"] = "application/json"
    response.headers["Via"] = VIA
    return response


def error_response(
    status: int, code: int, message: str, errors: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return discord_json(body, status)


def ratelimited(retry_after: float, *, is_global: bool, scope: str) -> web.Response:
    response = discord_json(
        {
            "message": "You are being rate limited.",
            "retry_after": round(retry_after, 3),
            "global": is_global,
            "code": 0,
        },
        429,
    )
    response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    response.headers["X-RateLimit-Scope"] = scope
    if is_global:
        response.headers["X-RateLimit-Global"] = "true"
    return response


def cloudflare_ban(retry_after: float) -> web.Response:
    """Cloudflare's rate-limit ban (error 1015): plain text, no `Via`, no X-RateLimit-*.
    Cloudflare's rate-limiting rules send `Retry-After` with it."""
    response = web.Response(status=429, text="error code: 1015", content_type="text/plain")
    response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return response


def cloudflare_blocked() -> web.Response:
    """What Cloudflare answers a bot request with a browser or missing User-Agent
    (discord/discord-api-docs#6473): JSON, but made by Cloudflare, so no `Via`."""
    response = web.Response(
        status=403, body=b'{"message": "internal network error", "code": 40333}'
    )
    response.headers["Content-Type"] = "application/json"
    return response


def server_error(status: int) -> web.Response:
    if status == 502:  # Cloudflare answers gateway errors with HTML, not JSON
        return web.Response(
            status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        )
    return error_response(status, 0, f"{status}: Internal Server Error")
