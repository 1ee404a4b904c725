"""The gateway protocol facts the daemon's own session needs: opcodes, intents, which
close codes allow a RESUME, the connect URL, the payloads it sends and zlib-stream
transport decompression. Pure; no I/O.

Sources: Discord's docs (docs/topics/Gateway.md, Opcodes_and_Status_Codes.md),
discord.py's gateway.py and discordgo's wsapi.go (cited in the issue-13 report).
"""

from __future__ import annotations

import json
import platform
import zlib
from enum import Enum
from typing import Any
from urllib.parse import urlencode

from monitor import __version__

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_RESUME = 6
OP_RECONNECT = 7
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
# No privileged intent: the daemon needs channel and message *events*, not content.
SESSION_INTENTS = INTENT_GUILDS | INTENT_GUILD_MESSAGES

GATEWAY_VERSION = 10
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
# Discord: max_concurrency IDENTIFYs are allowed per this many seconds.
IDENTIFY_WINDOW = 5.0

# Close codes after which a session must not reconnect at all (discord.py gateway.py
# `_can_handle_close`; Discord's table says "reconnect: false").
FATAL_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})
# Close codes after which Discord says "start a new session": reconnect, IDENTIFY.
NEW_SESSION_CLOSE_CODES = frozenset({4007, 4009})
AUTH_FAILED = 4004
# Our own close codes: 1000/1001 end the session on Discord's side; 4000 keeps it
# resumable (Discord's docs, "Initiating a Disconnect").
CLOSE_RESUMABLE = 4000
CLOSE_FINAL = 1000


class AfterClose(Enum):
    """What a session does after its connection closed with a given code."""

    RESUME = "resume"
    IDENTIFY = "identify"
    STOP = "stop"


def after_close(code: int | None) -> AfterClose:
    """The next step after the server closed (None: no close frame, a dropped TCP)."""
    if code in FATAL_CLOSE_CODES:
        return AfterClose.STOP
    if code in NEW_SESSION_CLOSE_CODES:
        return AfterClose.IDENTIFY
    return AfterClose.RESUME


def connect_url(base: str, *, compress: bool) -> str:
    """`base` (GET /gateway/bot's url or READY's resume_gateway_url) with our query."""
    query: dict[str, str | int] = {"v": GATEWAY_VERSION, "encoding": "json"}
    if compress:
        query["compress"] = "zlib-stream"
    return base.split("?", 1)[0].rstrip("/") + "/?" + urlencode(query)


def heartbeat(seq: int | None) -> str:
    return json.dumps({"op": OP_HEARTBEAT, "d": seq})


def identify(token: str) -> str:
    return json.dumps(
        {
            "op": OP_IDENTIFY,
            "d": {
                "token": token,
                "intents": SESSION_INTENTS,
                "properties": {
                    "os": platform.system().lower() or "linux",
                    "browser": f"cdp-monitor/{__version__}",
                    "device": "cdp-monitor",
                },
                "large_threshold": 50,
            },
        }
    )


def resume(token: str, session_id: str, seq: int | None) -> str:
    return json.dumps(
        {"op": OP_RESUME, "d": {"token": token, "session_id": session_id, "seq": seq}}
    )


class ZlibStream:
    """One connection's zlib-stream context: frames are buffered until one ends with
    Z_SYNC_FLUSH, then inflated with the context shared by the whole connection."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj()
        self._buffer = bytearray()

    def feed(self, data: bytes) -> str | None:
        """The text of a complete message, or None while one is still partial."""
        self._buffer.extend(data)
        if len(self._buffer) < 4 or self._buffer[-4:] != ZLIB_SUFFIX:
            return None
        text = self._inflate.decompress(bytes(self._buffer)).decode("utf-8")
        self._buffer.clear()
        return text


def decode(text: str) -> dict[str, Any]:
    """A gateway payload; ValueError for anything that is not a JSON object with `op`."""
    payload = json.loads(text)
    if not isinstance(payload, dict) or not isinstance(payload.get("op"), int):
        raise ValueError(f"not a gateway payload: {text[:80]!r}")
    return payload
