"""Discord simulator: REST (under /api/v10), gateway websocket, rate limits, faults.

Faithful to what Discord documents where cdp-monitor depends on it: `Bot` token auth,
snowflake ids carrying creation time, lowercased channel names, the 500-channel limit
(code 30013), 404 code 10003, per-route buckets keyed by bucket + major parameter with
`X-RateLimit-*` headers, a global per-second limit, 429 bodies with `retry_after` and
`global` plus `X-RateLimit-Scope`, and counting of invalid (401/403/429) requests.

    sim = DiscordSimulator(SimSettings(guild_id=..., token="sim-token"))
    await sim.start("127.0.0.1", 0)      # 0 = a free port
    sim.api_base, sim.gateway_url, sim.admin_url
    await sim.stop()

Modules: `models` (settings, channels, state), `simulator` (lifecycle and the model
helpers), `limits` (faults and rate limits, the middleware), `rest`, `gateway`, `admin`.
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
