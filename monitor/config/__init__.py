"""YAML → environment expansion and secret files → pydantic schema → frozen `Config`.

Every problem in a file is reported at once, as one `ConfigError` whose `problems`
are `(dotted.path, reason)` pairs. Secrets are `SecretStr`, so they never show up in a
repr, a dump or an error message.

    fields.py   annotated field types and their validators
    schema.py   the sections and `Config`, with the product's only defaults
    load.py     reading YAML, `${NAME}` expansion, token files, `load_config`
    sources.py  `CDP_MONITOR_*` variables, CDP's own names and `.env`, provenance
    errors.py   our problems as pydantic errors, and ValidationError → (path, reason)

Import from here; the unit helpers are re-exported for callers that parse values
the way the config does.
"""

from __future__ import annotations

from monitor.config.load import (
    LoadedConfig,
    default_config_path,
    load_config,
    load_config_sources,
    parse_config,
)
from monitor.config.schema import (
    ActionConfig,
    ActionsConfig,
    BreakerConfig,
    CdpConfig,
    CdpLogConfig,
    CdpProbeConfig,
    Config,
    ControlConfig,
    DiscordConfig,
    GateConfig,
    GatewayProbeConfig,
    GatewaySessionConfig,
    HealthConfig,
    LogConfig,
    ProbesConfig,
    ReconcileConfig,
    RestProbeConfig,
    SignalsConfig,
    StatuspageProbeConfig,
)
from monitor.errors import ConfigError
from monitor.units import (
    DURATION_HINT,
    HostPort,
    format_duration,
    is_loopback_host,
    parse_duration,
    parse_size,
    split_host_port,
)
from monitor.vocab import DEFAULT_NAME_PATTERN

__all__ = [
    "DEFAULT_NAME_PATTERN",
    "DURATION_HINT",
    "ActionConfig",
    "ActionsConfig",
    "BreakerConfig",
    "CdpConfig",
    "CdpLogConfig",
    "CdpProbeConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DiscordConfig",
    "GateConfig",
    "GatewayProbeConfig",
    "GatewaySessionConfig",
    "HealthConfig",
    "HostPort",
    "LoadedConfig",
    "LogConfig",
    "ProbesConfig",
    "ReconcileConfig",
    "RestProbeConfig",
    "SignalsConfig",
    "StatuspageProbeConfig",
    "default_config_path",
    "format_duration",
    "is_loopback_host",
    "load_config",
    "load_config_sources",
    "parse_config",
    "parse_duration",
    "parse_size",
    "split_host_port",
]
