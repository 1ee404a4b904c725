"""Gateway sessions as Discord keeps them: a session outlives its websocket (so RESUME
can replay what it missed), numbers its dispatches, and receives only the events its
intents ask for. `Connection` writes one websocket's frames in order, JSON as text or
zlib-stream compressed (one zlib context per connection, each payload ended by a
Z_SYNC_FLUSH, as discord.py's `_ZlibDecompressionContext` expects)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

GUILDS = 1 << 0
GUILD_MESSAGES = 1 << 9
EVENT_INTENTS = {
    "GUILD_CREATE": GUILDS,
    "CHANNEL_CREATE": GUILDS,
    "CHANNEL_UPDATE": GUILDS,
    "CHANNEL_DELETE": GUILDS,
    "MESSAGE_CREATE": GUILD_MESSAGES,
    "MESSAGE_UPDATE": GUILD_MESSAGES,
}
REPLAY_LIMIT = 1000  # dispatches kept per session for RESUME


class Connection:
    """One websocket: an ordered outbox written by a single task."""

    def __init__(self, ws: web.WebSocketResponse, *, zlib_stream: bool) -> None:
        self.ws = ws
        self._zlib = zlib.compressobj() if zlib_stream else None
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, payload: dict[str, Any]) -> None:
        self._outbox.put_nowait(payload)

    async def flush(self) -> None:
        """Wait until everything queued is written (before a close)."""
        self._outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await self._writer

    def abandon(self) -> None:
        self._writer.cancel()

    async def _write(self) -> None:
        while (payload := await self._outbox.get()) is not None:
            data = json.dumps(payload).encode()
            try:
                if self._zlib is None:
                    await self.ws.send_str(data.decode())
                else:
                    out = self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(out)
            except (ConnectionError, RuntimeError):
                return  # the socket went away; the reader notices


@dataclass
class Session:
    id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    sent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REPLAY_LIMIT))
    conn: Connection | None = None

    def push(self, event: str, data: Any) -> None:
        self.seq += 1
        payload = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.sent.append(payload)
        if self.conn is not None:
            self.conn.send(payload)

    def replay_after(self, seq: int) -> list[dict[str, Any]]:
        return [p for p in self.sent if p["s"] > seq]


class Sessions:
    """Every session the gateway has started, by id."""

    def __init__(self) -> None:
        self.by_id: dict[str, Session] = {}
        self.identify_times: deque[float] = deque()  # for max_concurrency spacing

    def start(self, session_id: str, intents: int, shard: list[int] | None) -> Session:
        session = Session(session_id, intents, shard)
        self.by_id[session_id] = session
        return session

    def dispatch(self, event: str, data: Any) -> None:
        need = EVENT_INTENTS.get(event, 0)
        for session in self.by_id.values():
            if session.intents & need == need:
                session.push(event, data)
