"""One gateway connection of the session: frames in (text or zlib-stream) and out, its
heartbeat bookkeeping, and how a connection ends (`SessionEnd`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from monitor.discord import session_proto as proto
from monitor.discord.session_proto import AfterClose


class SessionEnd(Exception):
    """Internal: how one connection ended and what comes next."""

    def __init__(self, reason: str, after: AfterClose, code: int | None = None, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.after, self.code, self.detail = reason, after, code, detail


@dataclass
class Connection:
    """One websocket connection: its zlib context and heartbeat bookkeeping."""

    ws: aiohttp.ClientWebSocketResponse
    inflate: proto.ZlibStream | None
    pending: float | None = None  # monotonic time of the unacknowledged heartbeat
    ended: SessionEnd | None = None  # set by the heartbeat task when it closes the socket

    async def send(self, text: str) -> None:
        try:
            await self.ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise SessionEnd(
                "closed", AfterClose.RESUME, self.ws.close_code, f"send: {exc!r}"
            ) from exc

    async def receive(self) -> dict[str, Any]:
        while True:
            msg = await self.ws.receive()
            if self.ended is not None:
                raise self.ended
            text: str | None
            if msg.type is aiohttp.WSMsgType.TEXT:
                text = msg.data
            elif msg.type is aiohttp.WSMsgType.BINARY and self.inflate is not None:
                text = self.inflate.feed(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                raise SessionEnd(
                    "closed", AfterClose.RESUME, None, "binary frame without compression"
                )
            else:
                code = self.ws.close_code
                raise SessionEnd("closed", proto.after_close(code), code, f"closed ({code})")
            if text is not None:
                try:
                    return proto.decode(text)
                except ValueError as exc:
                    raise SessionEnd("closed", AfterClose.RESUME, None, str(exc)) from None


async def close_ws(ws: aiohttp.ClientWebSocketResponse, code: int) -> None:
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.close(code=code), 2.0)
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        pass
