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
# (no hyphen), before that 对话<requestId> (git 9c6452e, 9074a5e). A request id starts
# with 14 digits (YYYYMMDDhhmmss), which the default pattern requires after the legacy
# prefixes: a server's own channel called "对话…" is not CDP's.
CHANNEL_PREFIX = "cdp-chat-"
LEGACY_CHANNEL_PREFIX = "cdp-对话"
OLDEST_CHANNEL_PREFIX = "对话"
LEGACY_CHANNEL_PREFIXES = (LEGACY_CHANNEL_PREFIX, OLDEST_CHANNEL_PREFIX)
CHANNEL_PREFIXES = (CHANNEL_PREFIX, *LEGACY_CHANNEL_PREFIXES)
DEFAULT_NAME_PATTERN = r"^(cdp-chat-|(cdp-)?对话\d{14})"

TEMP_CHANNEL_STATES = ("active", "empty", "stale", "leaked")

# Label values known up front, so their counters start at 0 and `increase()` in an alert
# sees the first event.
# Why CDP failed to create a channel (its log, cdplog.py): 3 attempts of 60 s timed out;
# discordgo's 20 s client timeout; 403/50013; 30013 (guild full); 502 after discordgo's
# retries; another HTTP 5xx; another HTTP error; a network error. `retries_exhausted` is
# the wording of CDP v4.3.6-v4.3.8 only (kept: such deployments exist).
CDP_FAILURE_REASONS = (
    "timeout",
    "http_timeout",
    "forbidden",
    "limit_30013",
    "bad_gateway",
    "server_error",
    "http_error",
    "network",
    "retries_exhausted",
)
RECONCILE_RESULTS = ("ok", "partial", "error", "dry_run")
# "cloudflare": a ban-shaped 429 (no JSON, no Via) from Cloudflare in front of Discord.
RATELIMIT_SCOPES = ("user", "global", "shared", "cloudflare")

# CDP's own trouble, never Discord's instability (`cdpmon_cdp_errors_total{kind}`): how
# the gate counts CDP's failed answers (monitor/gate/attribute.py), then what CDP's log
# shows (monitor/health/cdplog.py: user tokens, its own gateway session, fatal exits,
# failed auto-deletes, purges of in-use channels, a guild too full to purge).
CDP_ERROR_KINDS = (
    "no_available_user_auth",
    "model_not_found",
    "no_available_bot",
    "invalid_request",
    "error_sending_message",
    "prompt_too_long",
    "coze_error",
    "config_error",
    "image_fetch_failed",
    "rate_limited",
    "unauthorized",
    "other",
    "user_token",
    "gateway",
    "fatal",
    "delete_failed",
    "purge",
    "guild_full",
)
# Kinds of request the gate tells apart (`cdpmon_gate_requests_total{kind}`): a channel
# create, a thread create (`POST /api/thread/create`, not capped), anything else.
GATE_REQUEST_KINDS = ("create", "thread", "other")
# Why a gateway session connection ended (`cdpmon_gateway_reconnects_total{reason}`).
SESSION_END_REASONS = (
    "reconnect",
    "invalid_session",
    "heartbeat_timeout",
    "closed",
    "connect_failed",
)
# Words API gateways in front (one-api, new-api) read as "disable this channel": never in
# a refusal of ours (DESIGN section 7), nor statuses 401, 403, 504, 524.
GATEWAY_TRIGGER_WORDS = ("quota", "balance", "credit", "permission")
