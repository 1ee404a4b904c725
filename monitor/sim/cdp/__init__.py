"""CDP emulator: coze-discord-proxy's channel lifecycle, leaks included, over real HTTP.

It behaves the way coze-discord-proxy (Go, github deanxv/coze-discord-proxy) does toward
its clients and toward Discord (here: the Discord simulator), so the channel leak is
real in emulation:

- every `POST /v1/chat/completions` / `POST /v1/images/generations` without a
  `channelId` creates `cdp-chat-<requestId>` through CreateChannelWithRetry: up to
  `attempts` attempts of `attempt_timeout` each, a timed-out attempt is abandoned but
  never cancelled, so its channel appears later with no delete timer;
- after the response ends an in-memory timer deletes the channel (`auto_delete` s);
  a failed delete is never retried, and a restart (`POST /_cdp/restart`) forgets timers;
- the log lines cdp-monitor reads (`[GIN]`, `[WARN] ... retrying...N`, `[ERR] ...`).

    emu = CdpEmulator(CdpSettings(discord_api_base=sim.api_base, guild_id=...))
    await emu.start("127.0.0.1", 0)      # 0 = a free port
    emu.base_url, emu.admin_url
    await emu.stop()

Modules: `settings`, `emulator` (lifecycle, middleware, admin API), `handlers` (OpenAI
and /api endpoints), `channels` (creation with retry, delete timers), `discordgo` (the
Discord client as CDP's library behaves), `golog` (CDP's log lines).
"""

from monitor.sim.cdp.emulator import CdpEmulator
from monitor.sim.cdp.golog import format_go_duration
from monitor.sim.cdp.settings import CdpSettings

__all__ = ["CdpEmulator", "CdpSettings", "format_go_duration"]
