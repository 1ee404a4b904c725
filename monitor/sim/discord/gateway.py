"""The Discord simulator's gateway websocket: HELLO, heartbeats and their ACKs,
IDENTIFY answered with READY, and the gateway faults (refuse, late HELLO, slow or
dropped ACKs, close codes)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from monitor.sim.discord.models import GatewayFaults

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator


class Gateway:
    """The websocket endpoint and the sessions open on it."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim
        self.sockets: set[web.WebSocketResponse] = set()

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
        try:
            await self._gateway_session(ws, faults)
        finally:
            self.sockets.discard(ws)
        return ws

    async def _gateway_session(self, ws: web.WebSocketResponse, faults: GatewayFaults) -> None:
        if faults.hello_delay_ms:
            await asyncio.sleep(faults.hello_delay_ms / 1000.0)
        if faults.close_code is not None:
            self.sim.state.gateway_close_codes[faults.close_code] += 1
            await ws.close(code=faults.close_code, message=b"simulated close")
            return
        await ws.send_json(
            {
                "op": 10,
                "d": {"heartbeat_interval": self.sim.settings.heartbeat_interval_ms},
                "s": None,
                "t": None,
            }
        )
        seq = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                payload = json.loads(msg.data)
                op = payload["op"]
            except (ValueError, KeyError, TypeError):
                self.sim.state.gateway_close_codes[4002] += 1
                await ws.close(code=4002, message=b"Error while decoding payload.")
                return
            if op == 1:
                self.sim.state.gateway["heartbeats"] += 1
                if faults.drop_ack:
                    continue
                if faults.ack_delay_ms:
                    await asyncio.sleep(faults.ack_delay_ms / 1000.0)
                self.sim.state.gateway["acks"] += 1
                await ws.send_json({"op": 11})
            elif op == 2:
                self.sim.state.gateway["identifies"] += 1
                self.sim.state.session_starts_used += 1
                seq += 1
                await ws.send_json(self._ready(seq))
            else:
                self.sim.state.gateway_close_codes[4001] += 1
                await ws.close(code=4001, message=b"Unknown opcode.")
                return

    def _ready(self, seq: int) -> dict[str, Any]:
        sim = self.sim
        return {
            "op": 0,
            "t": "READY",
            "s": seq,
            "d": {
                "v": 10,
                "user": sim.user_json(sim.settings.bot_user_id, "cdp-bot"),
                "guilds": [{"id": str(sim.settings.guild_id), "unavailable": True}],
                "session_id": f"sim-{sim.state.session_starts_used}",
                "resume_gateway_url": sim.gateway_url,
            },
        }
