"""Events read off the daemon's /status: the facts other components keep as state
(the census, the REST client's token and ban flags, the last reconcile run) become
events on their rising edge, so those components need no event plumbing of their own."""

from __future__ import annotations

from typing import Any

from monitor.events import Events


class StatusWatch:
    """Call `observe` with each fresh /status dict; it emits on changes only."""

    def __init__(self, events: Events, *, reconcile_threshold: int) -> None:
        self._events = events
        self.reconcile_threshold = reconcile_threshold
        self._above = False
        self._token_invalid = False
        self._banned = False
        self._last_run: str | None = None

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

    def _census(self, census: dict[str, Any] | None) -> None:
        if census is None:
            return
        above = bool(census.get("above_watermark"))
        if above and not self._above:
            self._events.emit(
                "guild_watermark", channels=census.get("channels"), limit=census.get("limit")
            )
        self._above = above

    def _reconcile(self, reconcile: dict[str, Any] | None) -> None:
        last = (reconcile or {}).get("last_run")
        if not last or last.get("run_id") == self._last_run:
            return
        self._last_run = last.get("run_id")
        deleted = int(last.get("deleted") or 0)
        if not last.get("dry_run") and deleted >= max(1, self.reconcile_threshold):
            self._events.emit("reconcile_deleted", deleted=deleted, run_id=self._last_run)
