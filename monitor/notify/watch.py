"""Events read off the daemon's /status: the facts other components keep as state
(the census and the session's daily creations, the REST client's token and ban flags,
the last reconcile run, the probes)
become events on their rising edge, so those components need no event plumbing of
their own. Every Discord probe failing is `discord_unreachable`, the CDP probe failing
`cdp_trouble` (the gate and the gateway session add their own, finer ones)."""

from __future__ import annotations

from typing import Any

from monitor.events import Events

DISCORD_PROBES = ("gateway", "rest")


class StatusWatch:
    """Call `observe` with each fresh /status dict; it emits on changes only."""

    def __init__(
        self, events: Events, *, reconcile_threshold: int, creations_ratio: float = 0.8
    ) -> None:
        self._events = events
        self.reconcile_threshold = reconcile_threshold
        self.creations_ratio = creations_ratio
        self._near_cap = False
        self._above = False
        self._token_invalid = False
        self._banned = False
        self._last_run: str | None = None
        self._unreachable = False
        self._cdp_down = False

    def observe(self, status: dict[str, Any]) -> None:
        self._census(status.get("channels"))
        discord = status.get("discord") or {}
        invalid = bool(discord.get("token_invalid"))
        if invalid and not self._token_invalid:
            self._events.emit("token_invalid")
        self._token_invalid = invalid
        banned_for = float(discord.get("banned_for") or 0.0)
        if banned_for > 0 and not self._banned:
            self._events.emit("cloudflare_ban", seconds=banned_for)
        self._banned = banned_for > 0
        self._reconcile(status.get("reconcile"))
        self._probes(status.get("probes") or {})

    def _probes(self, probes: dict[str, Any]) -> None:
        discord = [probes[name] for name in DISCORD_PROBES if name in probes]
        unreachable = bool(discord) and not any(p.get("ok") for p in discord)
        if unreachable and not self._unreachable:
            detail = "; ".join(f"{p.get('detail')}" for p in discord)
            self._events.emit("discord_unreachable", detail=detail)
        self._unreachable = unreachable
        cdp = probes.get("cdp") or {}
        cdp_down = bool(cdp) and not cdp.get("ok")
        if cdp_down and not self._cdp_down:
            self._events.emit("cdp_trouble", detail=f"CDP does not answer: {cdp.get('detail')}")
        self._cdp_down = cdp_down

    def _census(self, census: dict[str, Any] | None) -> None:
        if census is None:
            return
        self._creations(census.get("live") or {})
        above = bool(census.get("above_watermark"))
        if above and not self._above:
            self._events.emit(
                "guild_watermark", channels=census.get("channels"), limit=census.get("limit")
            )
        self._above = above

    def _creations(self, live: dict[str, Any]) -> None:
        """The gateway session's count of creations in 24 h against the daily cap."""
        creates, cap = live.get("creates_24h"), live.get("create_limit_daily") or 0
        near = cap > 0 and creates is not None and creates >= self.creations_ratio * cap
        if near and not self._near_cap:
            self._events.emit(
                "daily_creations_near_cap",
                creates=creates,
                cap=cap,
                seconds_to_cap=live.get("seconds_to_create_cap"),
            )
        self._near_cap = near

    def _reconcile(self, reconcile: dict[str, Any] | None) -> None:
        last = (reconcile or {}).get("last_run")
        if not last or last.get("run_id") == self._last_run:
            return
        self._last_run = last.get("run_id")
        deleted = int(last.get("deleted") or 0)
        if not last.get("dry_run") and deleted >= max(1, self.reconcile_threshold):
            self._events.emit("reconcile_deleted", deleted=deleted, run_id=self._last_run)
