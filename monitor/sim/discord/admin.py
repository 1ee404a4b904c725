"""The Discord simulator's admin API under /_sim: state, the request log, faults,
seeding channels and posting messages as another user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.discord.models import CozeFaults, GatewayFaults, RestFaults, SimError

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator


class AdminApi:
    """What tests and the demo use to look at and steer the simulator."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/_sim/state", self._admin_state)
        r.add_get("/_sim/faults", self._admin_get_faults)
        r.add_put("/_sim/faults", self._admin_put_faults)
        r.add_delete("/_sim/faults", self._admin_clear_faults)
        r.add_post("/_sim/guilds/{guild_id}/channels", self._admin_seed)
        r.add_post("/_sim/channels/{channel_id}/messages", self._admin_message)
        r.add_get("/_sim/requests", self._admin_requests)

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.state.snapshot())

    async def _admin_requests(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "-inf"))
        except ValueError:
            return web.json_response({"error": "since must be a number"}, status=400)
        rows = [
            {"t": t, "route": route, "status": status}
            for t, route, status in self.sim.state.request_log
            if t >= since
        ]
        return web.json_response({"now": self.sim.clock.monotonic(), "requests": rows})

    async def _admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults_json())

    def _faults_json(self) -> dict[str, Any]:
        rest = dict(self.sim.state.rest_faults.__dict__)
        rest["routes"] = list(rest["routes"])
        return {
            "rest": rest,
            "gateway": dict(self.sim.state.gateway_faults.__dict__),
            "coze": dict(self.sim.state.coze_faults.__dict__),
        }

    async def _admin_put_faults(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            rest = body.pop("rest", None) or {}
            gateway = body.pop("gateway", None) or {}
            coze = body.pop("coze", None) or {}
            if body:
                raise ValueError(f"unknown keys: {sorted(body)}")
            if "routes" in rest:
                rest["routes"] = tuple(rest["routes"])
            # Build both before swapping so a bad body changes nothing.
            new_rest = RestFaults(**{**self.sim.state.rest_faults.__dict__, **rest})
            new_gw = GatewayFaults(**{**self.sim.state.gateway_faults.__dict__, **gateway})
            new_coze = CozeFaults(**{**self.sim.state.coze_faults.__dict__, **coze})
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        state = self.sim.state
        state.rest_faults, state.gateway_faults, state.coze_faults = new_rest, new_gw, new_coze
        if rest.get("cloudflare_ban_s"):  # the ban starts now and lasts that long
            state.banned_until = self.sim.clock.monotonic() + float(new_rest.cloudflare_ban_s)
        return web.json_response(self._faults_json())

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.sim.state.rest_faults = RestFaults()
        self.sim.state.gateway_faults = GatewayFaults()
        self.sim.state.coze_faults = CozeFaults()
        self.sim.state.banned_until = 0.0  # lifts a Cloudflare ban too
        return web.json_response(self._faults_json())

    async def _admin_seed(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            guild_id = int(request.match_info["guild_id"])
            if guild_id != self.sim.settings.guild_id:
                raise ValueError("unknown guild")
            count = int(body.get("count", 1))
            prefix = str(body.get("prefix", "cdp-chat-"))
            messages = int(body.get("messages", 0))
            age = float(body.get("age_seconds", 0))
            type_ = int(body.get("type", 0))
            names = body.get("names")
            if names is not None and (not isinstance(names, list) or len(names) != count):
                raise ValueError("names must be a list of `count` strings")
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        created: list[str] = []
        try:
            for i in range(count):
                name = str(names[i]) if names else f"{prefix}{self.sim.random.getrandbits(48):012x}"
                channel = self.sim.add_channel(name, type_, age_seconds=age)
                for j in range(messages):
                    self.sim.add_message(channel, f"seeded message {j}")
                created.append(str(channel.id))
        except SimError as exc:
            return web.json_response(
                {"error": exc.message, "code": exc.code, "channels": created}, status=exc.status
            )
        return web.json_response({"channels": created})

    async def _admin_message(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        raw = request.match_info["channel_id"]
        channel = self.sim.state.channels.get(int(raw)) if raw.isdigit() else None
        if channel is None:
            return web.json_response({"error": "unknown channel"}, status=404)
        author = str(body.get("author", "someone"))
        author_id = self.sim.settings.coze_bot_id if author == "coze" else None
        msg = self.sim.add_message(
            channel, str(body.get("content", "hello")), author=author, author_id=author_id
        )
        return web.json_response(self.sim.message_json(msg, channel.id))


async def _admin_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "invalid JSON"}', content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be an object"}', content_type="application/json"
        )
    return body
