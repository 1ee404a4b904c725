"""Discord simulator: REST (under /api/v9 and /api/v10), the gateway, rate limits,
faults, and the identities Discord has for cdp-monitor and CDP.

Faithful to what Discord does where real clients (discord.py, discordgo, ours) depend
on it: the bytes (`Content-Type: application/json` exactly, `Via: 1.1 google`, error
bodies with string `_errors` codes, 405s), `Bot` token auth and user tokens, snowflake
ids, lowercased channel names, the 500-channel limit (30013), 404 codes, per-route
buckets with `X-RateLimit-*` headers, the global limit, 429 bodies and scopes,
Cloudflare's answers (User-Agent blocks, 1015 bans, the invalid-request ban), gateway
sessions (IDENTIFY, RESUME, zlib-stream, close codes, dispatch by intents) and a Coze
bot persona answering mentions.

    sim = DiscordSimulator(SimSettings(guild_id=..., token="sim-token"))
    await sim.start("127.0.0.1", 0)      # 0 = a free port
    sim.api_base, sim.gateway_url, sim.admin_url
    await sim.stop()

Modules: `models` (settings, faults, channels, state), `simulator` (lifecycle and the
model helpers, which dispatch), `shapes` (JSON shapes), `responses` (answer bytes),
`limits` (Cloudflare, faults, auth, rate limits: the middleware), `rest`, `gateway`
(the websocket protocol), `sessions` (sessions, replay, dispatch, zlib-stream),
`coze` (the Coze persona), `admin`.
"""

from monitor.sim.discord.models import (
    DEFAULT_ROUTE_LIMITS,
    Channel,
    CozeFaults,
    GatewayFaults,
    Message,
    RestFaults,
    RouteLimit,
    SimError,
    SimSettings,
    SimState,
)
from monitor.sim.discord.simulator import DiscordSimulator

__all__ = [
    "DEFAULT_ROUTE_LIMITS",
    "Channel",
    "CozeFaults",
    "DiscordSimulator",
    "GatewayFaults",
    "Message",
    "RestFaults",
    "RouteLimit",
    "SimError",
    "SimSettings",
    "SimState",
]
