"""Gateway probe: connect, time HELLO and one heartbeat ACK, close. Never IDENTIFY.

IDENTIFY counts against the bot's 1000-per-day session starts, shared with CDP;
exhausting them makes Discord reset the token. So the probe only ever sends op 1.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.discord.session_proto import OP_HEARTBEAT, OP_HEARTBEAT_ACK, OP_HELLO, connect_url

Outcome = Literal["ok", "timeout", "refused", "closed", "protocol_error"]
Phase = Literal["connect", "hello", "heartbeat_ack"]

# Cleanup after a failure gets at least this long even when the probe's budget is
# spent, so the connection is closed politely instead of leaked.
_MIN_CLOSE_GRACE = 0.1


@dataclass(frozen=True, slots=True)
class GatewayProbeResult:
    outcome: Outcome
    phase: Phase | None = None
    """Where the probe failed; None when it succeeded."""
    connect: float | None = None
    hello: float | None = None
    heartbeat_ack: float | None = None
    heartbeat_interval_ms: int | None = None
    close_code: int | None = None
    http_status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def latencies(self) -> dict[str, float]:
        """Latency per reached phase (seconds), keyed like the metric's `phase` label."""
        pairs = (
            ("connect", self.connect),
            ("hello", self.hello),
            ("heartbeat_ack", self.heartbeat_ack),
        )
        return {name: value for name, value in pairs if value is not None}


class _ProbeFailure(Exception):
    """Internal: ends the probe with a non-ok outcome from inside the timed block."""

    def __init__(
        self,
        outcome: Outcome,
        error: str,
        *,
        close_code: int | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error
        self.close_code = close_code
        self.http_status = http_status


@dataclass
class _Progress:
    """How far a probe got: the phase under way, what each finished phase took."""

    phase: Phase = "connect"
    latencies: dict[Phase, float] = field(default_factory=dict)
    interval: int | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None

    def result(
        self, outcome: Outcome, error: str | None = None, **extra: Any
    ) -> GatewayProbeResult:
        return GatewayProbeResult(
            outcome=outcome,
            phase=None if outcome == "ok" else self.phase,
            connect=self.latencies.get("connect"),
            hello=self.latencies.get("hello"),
            heartbeat_ack=self.latencies.get("heartbeat_ack"),
            heartbeat_interval_ms=self.interval,
            error=error,
            **extra,
        )


def gateway_connect_url(url: str) -> str:
    return connect_url(url, compress=False)


async def probe_gateway(
    url: str,
    *,
    session: aiohttp.ClientSession,
    timeout: float,
    clock: Clock = SYSTEM_CLOCK,
) -> GatewayProbeResult:
    """Probe the gateway at `url`; `timeout` bounds the whole probe.

    Returns a result for every network-level outcome; raises only on programming errors.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    p = _Progress()
    try:
        async with asyncio.timeout_at(deadline):
            p.ws = await _connect(url, session, clock, p)
            await _hello(p.ws, clock, p)
            await _heartbeat(p.ws, clock, p)
    except TimeoutError:
        await _close(p.ws, deadline)
        return p.result("timeout", f"no answer within {timeout:g}s (phase {p.phase})")
    except _ProbeFailure as exc:
        await _close(p.ws, deadline)
        return p.result(
            exc.outcome, exc.error, close_code=exc.close_code, http_status=exc.http_status
        )
    except BaseException:
        await _close(p.ws, deadline)
        raise
    await _close(p.ws, deadline)
    return p.result("ok")


async def _connect(
    url: str, session: aiohttp.ClientSession, clock: Clock, p: _Progress
) -> aiohttp.ClientWebSocketResponse:
    p.phase = "connect"
    started = clock.monotonic()
    try:
        ws = await session.ws_connect(
            gateway_connect_url(url), autoping=True, heartbeat=None, compress=0
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise _ProbeFailure(
            "refused", f"upgrade failed: HTTP {exc.status}", http_status=exc.status
        ) from exc
    except aiohttp.ClientError as exc:
        if isinstance(exc, TimeoutError):
            raise
        raise _ProbeFailure("refused", f"connect failed: {exc!r}") from exc
    p.latencies["connect"] = clock.monotonic() - started
    return ws


async def _hello(ws: aiohttp.ClientWebSocketResponse, clock: Clock, p: _Progress) -> None:
    p.phase = "hello"
    started = clock.monotonic()
    hello = await _receive_payload(ws, expect="HELLO")
    if hello.get("op") != OP_HELLO:
        raise _ProbeFailure("protocol_error", f"expected op 10 HELLO, got op {hello.get('op')!r}")
    p.interval = _heartbeat_interval(hello)
    p.latencies["hello"] = clock.monotonic() - started


async def _heartbeat(ws: aiohttp.ClientWebSocketResponse, clock: Clock, p: _Progress) -> None:
    p.phase = "heartbeat_ack"
    started = clock.monotonic()
    try:
        await ws.send_str(json.dumps({"op": OP_HEARTBEAT, "d": None}))
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise _ProbeFailure("closed", f"send failed: {exc!r}", close_code=ws.close_code) from exc
    while True:
        payload = await _receive_payload(ws, expect="HEARTBEAT_ACK")
        op = payload.get("op")
        if op == OP_HEARTBEAT_ACK:
            break
        # Op 1 is the server asking for a heartbeat; ours is already in flight.
        if op != OP_HEARTBEAT:
            raise _ProbeFailure("protocol_error", f"expected op 11 ACK, got op {op!r}")
    p.latencies["heartbeat_ack"] = clock.monotonic() - started


async def _receive_payload(ws: aiohttp.ClientWebSocketResponse, *, expect: str) -> dict[str, Any]:
    """Next JSON object from the socket, or a _ProbeFailure describing why not."""
    msg = await ws.receive()
    if msg.type is aiohttp.WSMsgType.TEXT:
        try:
            payload = json.loads(msg.data)
        except ValueError:
            raise _ProbeFailure(
                "protocol_error", f"non-JSON frame while waiting for {expect}"
            ) from None
        if not isinstance(payload, dict):
            raise _ProbeFailure("protocol_error", f"non-object payload while waiting for {expect}")
        return payload
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        code = ws.close_code
        reason = f": {msg.extra}" if msg.type is aiohttp.WSMsgType.CLOSE and msg.extra else ""
        raise _ProbeFailure(
            "closed", f"server closed with code {code} before {expect}{reason}", close_code=code
        )
    if msg.type is aiohttp.WSMsgType.BINARY:
        # We never ask for zlib, so a binary frame is not something we can read.
        raise _ProbeFailure("protocol_error", f"binary frame while waiting for {expect}")
    raise _ProbeFailure(
        "protocol_error", f"{msg.type.name} while waiting for {expect}: {msg.data!r}"
    )


def _heartbeat_interval(hello: dict[str, Any]) -> int:
    data = hello.get("d")
    value = data.get("heartbeat_interval") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _ProbeFailure("protocol_error", f"HELLO without a valid heartbeat_interval: {data!r}")
    return int(value)


async def _close(ws: aiohttp.ClientWebSocketResponse | None, deadline: float) -> None:
    """Close with 1000 within what is left of the budget; aiohttp aborts the
    connection itself if the close handshake is cancelled."""
    if ws is None or ws.closed:
        return
    budget = max(deadline - asyncio.get_running_loop().time(), _MIN_CLOSE_GRACE)
    try:
        await asyncio.wait_for(ws.close(code=aiohttp.WSCloseCode.OK), budget)
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        pass
