"""Every metric of DESIGN section 8, created on a registry passed in (never the global one)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from monitor import __version__
from monitor.vocab import (
    BREAKER_STATES,
    CDP_ERROR_KINDS,
    CDP_FAILURE_REASONS,
    RATELIMIT_SCOPES,
    RECONCILE_RESULTS,
    SESSION_END_REASONS,
)

ACTION_KINDS = ("exec", "webhook", "notify")
SUPPRESS_REASONS = ("rate_limited", "queue_full")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_GATE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Holds the daemon's metrics. Tests give each instance its own registry."""

    def __init__(self, registry: CollectorRegistry, *, process_metrics: bool = False) -> None:
        self.registry = registry
        # No `*_created` series beside every counter (process-wide; nothing here reads them).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        if process_metrics:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        # In this order: the exposition lists metrics in registration order.
        self._probes(registry)
        self._health(registry)
        self._discord(registry)
        self._guild(registry)
        self._gate(registry)
        self._process(registry)
        self.set_breaker_state("closed")

    def _probes(self, r: CollectorRegistry) -> None:
        """Probe results and the gateway probe's phases."""
        self.probe_success = Gauge(
            "cdpmon_probe_success",
            "1 if the last probe run succeeded",
            ["probe"],
            registry=r,
        )
        self.probe_duration = Gauge(
            "cdpmon_probe_duration_seconds", "Duration of the last probe run", ["probe"], registry=r
        )
        self._session(r)
        self.gateway_latency = Gauge(
            "cdpmon_gateway_latency_seconds",
            "Gateway probe latency of the last run by phase",
            ["phase"],
            registry=r,
        )

    def _session(self, r: CollectorRegistry) -> None:
        """The daemon's own gateway session."""
        self.gateway_heartbeat_latency = Gauge(
            "cdpmon_gateway_heartbeat_latency_seconds",
            "Latency of the session's last heartbeat ACK",
            registry=r,
        )
        self.gateway_session_enabled = Gauge(
            "cdpmon_gateway_session_enabled",
            "1 if discord.gateway_session.enabled",
            registry=r,
        )
        self.gateway_session_up = Gauge(
            "cdpmon_gateway_session_up", "1 while the gateway session is ready", registry=r
        )
        self.gateway_identifies = Counter(
            "cdpmon_gateway_identifies", "IDENTIFYs sent by the gateway session", registry=r
        )
        self.gateway_resumes = Counter(
            "cdpmon_gateway_resumes", "RESUMEs that Discord confirmed (RESUMED)", registry=r
        )
        self.gateway_reconnects = Counter(
            "cdpmon_gateway_reconnects",
            "Gateway session connections that ended, by why",
            ["reason"],
            registry=r,
        )
        self.gateway_identify_blocked = Gauge(
            "cdpmon_gateway_identify_blocked",
            "1 while the session may not IDENTIFY (budget) and the daemon falls back to REST",
            registry=r,
        )
        for reason in SESSION_END_REASONS:
            self.gateway_reconnects.labels(reason=reason)
        self.gateway_session_up.set(0)
        self.gateway_identify_blocked.set(0)

    def _health(self, r: CollectorRegistry) -> None:
        """The health window's ratios, the breaker and the manual pause."""
        self.health_failure_ratio = Gauge(
            "cdpmon_health_failure_ratio", "Failure ratio in the health window", registry=r
        )
        self.health_slow_ratio = Gauge(
            "cdpmon_health_slow_ratio", "Slow ratio in the health window", registry=r
        )
        self.breaker_state = Gauge(
            "cdpmon_breaker_state", "1 for the breaker's current state", ["state"], registry=r
        )
        self.breaker_transitions = Counter(
            "cdpmon_breaker_transitions", "Breaker transitions by target state", ["to"], registry=r
        )
        self.paused = Gauge("cdpmon_paused", "1 while a manual pause is in force", registry=r)
        for state in BREAKER_STATES:
            self.breaker_transitions.labels(to=state)
        self.paused.set(0)

    def _discord(self, r: CollectorRegistry) -> None:
        """The Discord client: requests, retries, rate limits, token."""
        self.discord_requests = Counter(
            "cdpmon_discord_requests",
            "Requests sent to Discord by route template, method and status code",
            ["route", "method", "code"],
            registry=r,
        )
        self.discord_request_duration = Histogram(
            "cdpmon_discord_request_duration_seconds",
            "Duration of Discord requests",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.discord_retries = Counter(
            "cdpmon_discord_retries",
            "Retries of Discord requests by reason",
            ["route", "reason"],
            registry=r,
        )
        self.discord_ratelimited = Counter(
            "cdpmon_discord_ratelimited",
            "429 answers from Discord by scope (user, global, shared, cloudflare)",
            ["scope"],
            registry=r,
        )
        self.discord_invalid_requests = Counter(
            "cdpmon_discord_invalid_requests",
            "401/403/429 answers (they count toward Cloudflare's ban threshold)",
            registry=r,
        )
        self.discord_malformed = Counter(
            "cdpmon_discord_malformed_responses",
            "Discord answers that were not the JSON expected",
            ["route"],
            registry=r,
        )
        self.discord_token_invalid = Gauge(
            "cdpmon_discord_token_invalid",
            "1 once Discord answered 401: the monitor stopped calling Discord",
            registry=r,
        )
        self.session_starts_remaining = Gauge(
            "cdpmon_discord_session_starts_remaining",
            "session_start_limit.remaining from GET /gateway/bot",
            registry=r,
        )
        for scope in RATELIMIT_SCOPES:
            self.discord_ratelimited.labels(scope=scope)
        self.discord_token_invalid.set(0)

    def _guild(self, r: CollectorRegistry) -> None:
        """The guild's channels and the reconciler."""
        self.guild_channels = Gauge(
            "cdpmon_guild_channels", "Channels in the guild", ["guild"], registry=r
        )
        self.guild_channel_limit = Gauge(
            "cdpmon_guild_channel_limit", "Channel limit of the guild", ["guild"], registry=r
        )
        self.temp_channels = Gauge(
            "cdpmon_temp_channels",
            "Temporary (CDP) channels by state",
            ["guild", "state"],
            registry=r,
        )
        self.guild_channel_exhaustion = Gauge(
            "cdpmon_guild_channel_exhaustion_seconds",
            "Seconds until the channel limit at the recent growth rate (+Inf if not growing)",
            ["guild"],
            registry=r,
        )
        self.guild_channel_creates_24h = Gauge(
            "cdpmon_guild_channel_creates_24h",
            "Channel creations in the guild over the last 24 h",
            ["guild"],
            registry=r,
        )
        self.guild_channel_create_limit_daily = Gauge(
            "cdpmon_guild_channel_create_limit_daily",
            "Daily channel-creation cap (discord.daily_create_limit; 0: off)",
            ["guild"],
            registry=r,
        )
        self.guild_channel_create_cap_seconds = Gauge(
            "cdpmon_guild_channel_create_cap_seconds",
            "Seconds until the daily creation cap at the last hour's rate (+Inf if not near)",
            ["guild"],
            registry=r,
        )
        self.channels_deleted = Counter(
            "cdpmon_channels_deleted",
            "Channels deleted by the reconciler by reason",
            ["guild", "reason"],
            registry=r,
        )
        self.reconcile_runs = Counter(
            "cdpmon_reconcile_runs", "Reconcile runs by result", ["result"], registry=r
        )
        self.reconcile_last_success = Gauge(
            "cdpmon_reconcile_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile run",
            registry=r,
        )
        for result in RECONCILE_RESULTS:
            self.reconcile_runs.labels(result=result)

    def _gate(self, r: CollectorRegistry) -> None:
        """The gate and the channel-create outcomes seen in CDP's log."""
        self.gate_requests = Counter(
            "cdpmon_gate_requests", "Requests seen by the gate", ["kind", "decision"], registry=r
        )
        self.gate_inflight = Gauge(
            "cdpmon_gate_inflight", "Requests in flight through the gate", ["kind"], registry=r
        )
        self.gate_request_duration = Histogram(
            "cdpmon_gate_request_duration_seconds",
            "Duration of requests through the gate",
            ["kind"],
            buckets=_GATE_BUCKETS,
            registry=r,
        )
        self.gate_responses = Counter(
            "cdpmon_gate_responses",
            "Answers the gate gave by request kind and HTTP status code",
            ["kind", "code"],
            registry=r,
        )
        self.cdp_errors = Counter(
            "cdpmon_cdp_errors",
            "Channel-creating requests CDP failed for its own reasons (not Discord's), by kind",
            ["kind"],
            registry=r,
        )
        self.discord_reachable = Gauge(
            "cdpmon_discord_reachable",
            "1 once a Discord probe or session has succeeded since start; 0 until then",
            registry=r,
        )
        self.gate_fail_open = Gauge(
            "cdpmon_gate_fail_open",
            "1 while the gate forwards creates unchecked because health evaluation is broken",
            registry=r,
        )
        for kind in CDP_ERROR_KINDS:
            self.cdp_errors.labels(kind=kind)
        self.discord_reachable.set(0)
        self._cdp_log(r)
        self._create_limit(r)

    def _create_limit(self, r: CollectorRegistry) -> None:
        """The gate's adaptive create limit (monitor/gate/limit.py)."""
        self.gate_create_limit = Gauge(
            "cdpmon_gate_create_limit",
            "Creates that may be pending at CDP at once at Discord's current creation time",
            registry=r,
        )
        self.gate_create_predicted_wait = Gauge(
            "cdpmon_gate_create_predicted_wait_seconds",
            "Predicted wait in CDP's create queue of one more create admitted now",
            registry=r,
        )
        self.gate_create_seconds = Gauge(
            "cdpmon_gate_create_seconds",
            "Discord's creation time per channel as measured by the gate (slowest recent)",
            registry=r,
        )
        self.gate_creates = Counter(
            "cdpmon_gate_creates",
            "Creates admitted by the gate, and completed (their channel seen)",
            ["stage"],
            registry=r,
        )
        for stage in ("admitted", "completed"):
            self.gate_creates.labels(stage=stage)

    def _cdp_log(self, r: CollectorRegistry) -> None:
        """What CDP's log shows: channel-create retries and failures, restarts, purges."""
        self.cdp_create_retries = Counter(
            "cdpmon_cdp_channel_create_retries",
            "Channel-create retries seen in CDP's log",
            registry=r,
        )
        self.cdp_create_failures = Counter(
            "cdpmon_cdp_channel_create_failures",
            "Channel-create failures seen in CDP's log by reason",
            ["reason"],
            registry=r,
        )
        for reason in CDP_FAILURE_REASONS:
            self.cdp_create_failures.labels(reason=reason)
        self.cdp_restarts = Counter(
            "cdpmon_cdp_restarts", "CDP process starts seen in its log", registry=r
        )
        self.cdp_purges_when_full = Gauge(
            "cdpmon_cdp_purges_when_full",
            "1 when CDP deletes in-use channels itself on a full guild (MAX_CHANNEL_DEL_TYPE)",
            registry=r,
        )

    def _process(self, r: CollectorRegistry) -> None:
        """Build, config reloads, supervised loops and breaker actions."""
        self.build_info = Gauge("cdpmon_build_info", "Build information", ["version"], registry=r)
        self.config_last_reload_successful = Gauge(
            "cdpmon_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded",
            registry=r,
        )
        self.loop_restarts = Counter(
            "cdpmon_loop_restarts", "Supervised loop restarts after a crash", ["loop"], registry=r
        )
        self.loop_up = Gauge(
            "cdpmon_loop_up", "1 while the supervised loop is running", ["loop"], registry=r
        )
        self.action_failures = Counter(
            "cdpmon_action_failures", "Failed actions and notifications", ["kind"], registry=r
        )
        self.action_attempts = Counter(
            "cdpmon_action_attempts",
            "Actions and notifications tried (exec, webhook, notify)",
            ["kind"],
            registry=r,
        )
        self.notifications_suppressed = Counter(
            "cdpmon_notifications_suppressed",
            "Events not sent: the kind spoke within the period, or the queue was full",
            ["reason"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        for kind in ACTION_KINDS:
            self.action_failures.labels(kind=kind)
            self.action_attempts.labels(kind=kind)
        for reason in SUPPRESS_REASONS:
            self.notifications_suppressed.labels(reason=reason)
        self.config_last_reload_successful.set(1)

    def set_breaker_state(self, state: str) -> None:
        for s in BREAKER_STATES:
            self.breaker_state.labels(state=s).set(1 if s == state else 0)
