"""The two simulators cdp-monitor is tested and demonstrated against: `discord` (the
Discord REST API and gateway) and `cdp` (the CDP emulator, leaks included). They sit
below the product: they import only `monitor.clock`, `errors`, `httpserve`, `vocab` and
`discord.snowflake`, never the daemon, gate, health, reconciler or config."""
