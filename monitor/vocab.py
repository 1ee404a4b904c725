"""Words shared across the package, each defined once: breaker states, health sample
sources, CDP's channel-name prefixes, temporary-channel states."""

from __future__ import annotations

# What `/status` and `cdpmon_breaker_state{state}` report; "forced_open" is a pause.
BREAKER_STATES = ("closed", "open", "half_open", "forced_open")
# The health machine's own states; a pause lives in pause.json and overlays them.
MACHINE_STATES = ("closed", "open", "half_open")
OPEN_STATES = frozenset({"open", "forced_open"})

# Where a health sample comes from. "cdp" is CDP's own liveness: reported, never an
# input to the Discord judgement (a dead CDP says nothing about Discord).
SOURCES = ("gateway", "rest", "gate", "cdplog", "cdp", "statuspage")
DISCORD_SOURCES = frozenset(SOURCES) - {"cdp"}

# CDP >= 4.4.3 names its channels cdp-chat-<requestId>; v4.0.8-v4.4.2 cdp-对话<requestId>
# (no hyphen), earlier versions 对话<requestId>.
CHANNEL_PREFIX = "cdp-chat-"
LEGACY_CHANNEL_PREFIX = "cdp-对话"
LEGACY_CHANNEL_PREFIXES = (LEGACY_CHANNEL_PREFIX, "对话")
CHANNEL_PREFIXES = (CHANNEL_PREFIX, *LEGACY_CHANNEL_PREFIXES)
DEFAULT_NAME_PATTERN = r"^cdp-(chat|对话)-"

TEMP_CHANNEL_STATES = ("active", "empty", "stale", "leaked")

# Label values known up front, so their counters start at 0 and `increase()` in an alert
# sees the first event.
CDP_FAILURE_REASONS = ("timeout", "channel_limit", "retries_exhausted")
RECONCILE_RESULTS = ("ok", "partial", "error", "dry_run")
# "cloudflare": a ban-shaped 429 (no JSON, no Via) from Cloudflare in front of Discord.
RATELIMIT_SCOPES = ("user", "global", "shared", "cloudflare")
# Why a gateway session connection ended (`cdpmon_gateway_reconnects_total{reason}`).
SESSION_END_REASONS = (
    "reconnect",
    "invalid_session",
    "heartbeat_timeout",
    "closed",
    "connect_failed",
)
