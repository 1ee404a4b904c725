"""cdp-monitor: keeps a coze-discord-proxy deployment alive when Discord gets shaky."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/cdp-monitor/cdp-monitor"
USER_AGENT = f"DiscordBot ({PROJECT_URL}, {__version__})"
