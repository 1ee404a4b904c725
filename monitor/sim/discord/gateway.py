"""The Discord simulator's gateway websocket, run as Discord runs it (discord-api-docs
developers/events/gateway.mdx, developers/topics/opcodes-and-status-codes.mdx): query
checks (`v` 4012, `encoding` json only, `compress=zlib-stream`), HELLO with `_trace`,
heartbeats and ACKs, 4009 for a client that stops heartbeating, 4008 past 120 payloads
a minute, IDENTIFY (4004 bad token, 4005 twice, 4010 bad shard, 4013 bad intents, 4014
privileged intents not allowed, op 9 when IDENTIFYs come faster than `max_concurrency`)
answered by READY and GUILD_CREATE, RESUME (replay then RESUMED; 4007 for a seq never
sent; op 9 for an unknown session or one that missed more than is kept), 4003 before
IDENTIFY, 4002 undecodable payloads, 4001 unknown opcodes, and the gateway faults
(refuse, late HELLO, slow or dropped ACKs, close codes, op 7, op 9)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from monitor.sim.discord.sessions import GUILDS, Connection, Session, Sessions

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator

TRACE = ['["gateway-sim-0",{"micros":0.0}]']
VERSIONS = ("9", "10")
HEARTBEAT_GRACE = 1.5  # a client may be this many intervals late before it is dropped
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)  # members, presences, message content
SEND_WINDOW_S = 60.0


class Closed(Exception):
    """Close the websocket with this Discord close code."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)


class Gateway:
    """The websocket endpoint; `sessions` outlive the sockets they ran on."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim
        self.sockets: set[web.WebSocketResponse] = set()
        self.sessions = Sessions()

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/gateway", self._gateway_ws)
        r.add_get("/gateway/", self._gateway_ws)

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close(code=1001)

    async def _gateway_ws(self, request: web.Request) -> web.StreamResponse:
        faults = self.sim.state.gateway_faults
        if faults.refuse:
            self.sim.state.gateway["refused"] += 1
            return web.Response(status=503, text="upstream connect error")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.add(ws)
        self.sim.state.gateway["connections"] += 1
        conn = Connection(ws, zlib_stream=request.query.get("compress") == "zlib-stream")
        run = _Run(self, conn)
        try:
            self._check_query(request)
            await run.serve()
        except Closed as closed:
            await conn.flush()
            self.sim.state.gateway_close_codes[closed.code] += 1
            await ws.close(code=closed.code, message=closed.reason.encode())
        finally:
            conn.abandon()
            if run.session is not None and run.session.conn is conn:
                run.session.conn = None  # resumable
            self.sockets.discard(ws)
        return ws

    def _check_query(self, request: web.Request) -> None:
        v = request.query.get("v")
        if v is not None and v not in VERSIONS:
            raise Closed(4012, "Invalid API version.")
        if request.query.get("encoding", "json") != "json":
            # Discord speaks ETF too; this simulator does not, and says so the way Discord
            # refuses a payload it cannot decode.
            raise Closed(4002, "Error while decoding payload (only encoding=json here).")
        if request.query.get("compress", "zlib-stream") != "zlib-stream":
            raise Closed(4002, "Error while decoding payload (only compress=zlib-stream).")


class _Run:
    """One connection's protocol state."""

    def __init__(self, gateway: Gateway, conn: Connection) -> None:
        self.gw = gateway
        self.sim = gateway.sim
        self.conn = conn
        self.session: Session | None = None
        self.interval = self.sim.settings.heartbeat_interval_ms / 1000.0
        self.received: list[float] = []  # loop times of client payloads, for 4008

    async def serve(self) -> None:
        faults = self.sim.state.gateway_faults
        if faults.hello_delay_ms:
            await asyncio.sleep(faults.hello_delay_ms / 1000.0)
        if faults.close_code is not None:
            raise Closed(faults.close_code, "simulated close")
        hello = {"heartbeat_interval": self.sim.settings.heartbeat_interval_ms, "_trace": TRACE}
        self.conn.send({"op": 10, "d": hello, "s": None, "t": None})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.interval * HEARTBEAT_GRACE
        while True:
            try:
                msg = await self.conn.ws.receive(timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise Closed(4009, "Session timed out.") from None
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:
                return
            op, d = _decode(msg)
            self._count_payload(loop.time())
            if op == 1:
                deadline = loop.time() + self.interval * HEARTBEAT_GRACE
            await self._handle(op, d)

    def _count_payload(self, now: float) -> None:
        """Discord allows 120 payloads per 60 s per connection and closes with 4008."""
        self.received = [t for t in self.received if t > now - SEND_WINDOW_S]
        self.received.append(now)
        if len(self.received) > self.sim.settings.gateway_send_limit:
            raise Closed(4008, "Rate limited.")

    async def _handle(self, op: int, d: Any) -> None:
        if op == 1:
            await self._heartbeat()
        elif op == 2:
            self._identify(d)
        elif op == 6:
            self._resume(d)
        elif self.session is None:
            raise Closed(4003, "Not authenticated.")
        elif op not in (3, 4, 8):  # presence, voice state, request members: accepted
            raise Closed(4001, "Unknown opcode.")

    async def _heartbeat(self) -> None:
        faults = self.sim.state.gateway_faults
        self.sim.state.gateway["heartbeats"] += 1
        if faults.drop_ack:
            return
        if faults.ack_delay_ms:
            await asyncio.sleep(faults.ack_delay_ms / 1000.0)
        self.sim.state.gateway["acks"] += 1
        self.conn.send({"op": 11, "d": None})

    def _check_token(self, d: Any) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise Closed(4002, "Error while decoding payload.")
        token = str(d.get("token", ""))
        if token.removeprefix("Bot ") != self.sim.settings.token:
            raise Closed(4004, "Authentication failed.")
        return d

    def _identify(self, d: Any) -> None:
        if self.session is not None:
            raise Closed(4005, "Already authenticated.")
        d = self._check_token(d)
        intents = d.get("intents", GUILDS)
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            raise Closed(4013, "Invalid intent(s).")
        if intents & PRIVILEGED_INTENTS & ~self.sim.settings.allowed_privileged_intents:
            raise Closed(4014, "Disallowed intent(s).")
        shard = _shard(d.get("shard"))
        state = self.sim.state
        if self.sim.state.gateway_faults.invalid_session or not self._may_identify():
            self.conn.send({"op": 9, "d": False, "s": None, "t": None})
            return
        state.gateway["identifies"] += 1
        state.session_starts_used += 1
        session = self.gw.sessions.start(f"sim-{state.session_starts_used}", intents, shard)
        session.conn = self.conn
        self.session = session
        session.push("READY", self._ready(session))
        if intents & GUILDS:
            session.push("GUILD_CREATE", self.sim.guild_json())
        self._maybe_reconnect()

    def _may_identify(self) -> bool:
        """`max_concurrency` IDENTIFYs per `identify_spacing_s` (Discord: 1 per 5 s);
        one too many is answered with op 9."""
        times, settings = self.gw.sessions.identify_times, self.sim.settings
        now = self.sim.clock.monotonic()
        while times and times[0] <= now - settings.identify_spacing_s:
            times.popleft()
        if len(times) >= settings.max_concurrency:
            return False
        times.append(now)
        return True

    def _resume(self, d: Any) -> None:
        if self.session is not None:
            raise Closed(4005, "Already authenticated.")
        d = self._check_token(d)
        session = self.gw.sessions.by_id.get(str(d.get("session_id")))
        seq = d.get("seq")
        if session is None or self.sim.state.gateway_faults.invalid_session:
            self.conn.send({"op": 9, "d": False, "s": None, "t": None})
            return
        if not isinstance(seq, int) or seq > session.seq:
            raise Closed(4007, "Invalid seq.")
        missed = session.replay_after(seq)
        if missed and missed[0]["s"] != seq + 1:  # older than what is kept: start anew
            self.conn.send({"op": 9, "d": False, "s": None, "t": None})
            return
        self.sim.state.gateway["resumes"] += 1
        if session.conn is not None and session.conn is not self.conn:
            session.conn.abandon()
        for payload in missed:
            self.conn.send(payload)
        session.conn = self.conn
        self.session = session
        session.push("RESUMED", {"_trace": TRACE})
        self._maybe_reconnect()

    def _maybe_reconnect(self) -> None:
        if self.sim.state.gateway_faults.reconnect:
            self.conn.send({"op": 7, "d": None, "s": None, "t": None})

    def _ready(self, session: Session) -> dict[str, Any]:
        sim = self.sim
        user = sim.user_json(sim.settings.bot_user_id, "cdp-bot")
        user.update(bot=True, verified=True, mfa_enabled=False)
        ready: dict[str, Any] = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(sim.settings.guild_id), "unavailable": True}],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": sim.gateway_url,
            "application": {"id": str(sim.settings.bot_user_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "_trace": TRACE,
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        return ready


def _decode(msg: Any) -> tuple[int, Any]:
    """Client payloads are JSON text; anything else is Discord's 4002."""
    if msg.type != WSMsgType.TEXT:
        raise Closed(4002, "Error while decoding payload.")
    try:
        payload = json.loads(msg.data)
        op = payload["op"]
    except (ValueError, KeyError, TypeError):
        raise Closed(4002, "Error while decoding payload.") from None
    if not isinstance(op, int):
        raise Closed(4002, "Error while decoding payload.")
    return op, payload.get("d")


def _shard(raw: Any) -> list[int] | None:
    if raw is None:
        return None
    ok = (
        isinstance(raw, list)
        and len(raw) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
        and 0 <= raw[0] < raw[1]
    )
    if not ok:
        raise Closed(4010, "Invalid shard.")
    return [raw[0], raw[1]]
