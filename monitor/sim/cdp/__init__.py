"""CDP emulator: coze-discord-proxy v4.6.5 (github deanxv/coze-discord-proxy, with
discordgo v0.27.1 and gin v1.9.1) as its clients and Discord (here: the Discord
simulator) see it, so the channel leak is real in emulation. /work/shared/CDP-FACTS.md
sections 1-6 are what it follows.

    emu = CdpEmulator(CdpSettings(discord_api_base=sim.api_base, guild_id=...).with_env(os.environ))
    await emu.start("127.0.0.1", 0)      # 0 = a free port; CdpFatal as CDP's FatalLog
    emu.base_url, emu.admin_url
    await emu.stop()

Modules: `settings` (CDP's environment and constants), `emulator` (the process, the gin
middleware chain, crash and restart), `handlers` (OpenAI endpoints), `apiroutes` (the
/api group), `decode` (Go's JSON decoding), `channels` (CreateChannelWithRetry, delete
timers, del/all), `conversation` (user-token prompt sends, Coze's reply), `stayactive`
(the daily task and its crash), `discordgo` (CDP's Discord library), `golog` (CDP's log
lines and where they go), `admin` (the /_cdp API)."""

from monitor.sim.cdp.emulator import CdpEmulator, CdpFatal
from monitor.sim.cdp.golog import format_go_duration
from monitor.sim.cdp.settings import CdpSettings

__all__ = ["CdpEmulator", "CdpFatal", "CdpSettings", "format_go_duration"]
