"""Channels listed without `last_message_id` (optional in Discord's OpenAPI): the ledger
judges them first, and an "empty" judgement waits for the newest message to show it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitor.discord.rest import DiscordRestClient
from monitor.ledger import RequestLedger
from monitor.reconcile.plan import newest_message_id, plan, recheck
from tests.helpers.reconcile import GUILD, HOUR, MIN, NOW, cfg, chan, ids, sf, why_of
from tests.test_reconcile_run import sim_env

OPENAPI = Path(__file__).resolve().parents[2] / "shared" / "discord-api-spec" / "openapi.json"


def unlisted(c: dict[str, Any]) -> dict[str, Any]:
    out = dict(c)
    del out["last_message_id"]
    return out


def test_the_openapi_marks_last_message_id_optional() -> None:
    schema = json.loads(OPENAPI.read_text())["components"]["schemas"]["GuildChannelResponse"]
    assert "last_message_id" in schema["properties"]
    assert "last_message_id" not in schema.get("required", [])


def test_an_old_unlisted_channel_is_a_candidate_pending_the_emptiness_check() -> None:
    old, young = unlisted(chan(HOUR)), unlisted(chan(MIN))
    p = plan([old, young], None, cfg(), NOW, guild_limit=500)
    assert ids(p.actions) == [old["id"]]
    (a,) = p.actions
    assert a.reason == "empty_aged" and not a.last_listed and a.last_message_id is None
    assert a.as_dict()["emptiness"] == "checked just before deleting"
    assert "last_message_id not listed" in why_of(p, young["id"])
    # Listed channels are as before.
    (listed,) = plan([chan(HOUR)], None, cfg(), NOW, guild_limit=500).actions
    assert listed.last_listed and "emptiness" not in listed.as_dict()


def test_the_ledger_judges_an_unlisted_channel_first() -> None:
    ledger = RequestLedger(state_dir=None)
    is_open = unlisted(chan(HOUR, "cdp-chat-open1"))
    failed = unlisted(chan(HOUR, "cdp-chat-fail1"))
    recent = unlisted(chan(HOUR, "cdp-chat-done1"))
    ledger.opened("open1", NOW - HOUR)
    ledger.opened("fail1", NOW - HOUR)
    ledger.failed("fail1", NOW - HOUR)
    ledger.opened("done1", NOW - HOUR)
    ledger.completed("done1", NOW - 10)
    p = plan([is_open, failed, recent], ledger.snapshot(), cfg(), NOW, guild_limit=500)
    assert ids(p.actions) == [failed["id"]]
    assert p.actions[0].reason == "ledger_failed" and not p.actions[0].last_listed
    assert "still open" in why_of(p, is_open["id"])
    assert "CDP deletes it itself" in why_of(p, recent["id"])


def test_newest_message_id_reads_a_limit_1_listing() -> None:
    mid = sf(MIN)
    assert newest_message_id([]) is None
    assert newest_message_id([{"id": str(mid)}]) == mid
    for junk in (None, {}, "x", [{"id": "soon"}], ["x"]):
        assert isinstance(newest_message_id(junk), str), junk


def test_recheck_deletes_an_unlisted_channel_only_once_shown_empty() -> None:
    c = unlisted(chan(HOUR))
    (a,) = plan([c], None, cfg(), NOW, guild_limit=500, guild_id=GUILD).actions

    def again(fresh: Any, messages: Any) -> tuple[str | None, str]:
        return recheck(
            a, fresh, None, cfg(), NOW, min_age=cfg().min_age, guild_id=GUILD, messages=messages
        )

    assert again(c, []) == ("empty_aged", "")
    assert again({**c, "last_message_id": None}, None) == ("empty_aged", "")  # now listed
    # Unsure: keep.
    reason, why = again(c, None)
    assert reason is None and "not checked" in why
    reason, why = again(c, {"message": "?"})
    assert reason is None and "not a list" in why
    # It has messages: keep, recent or old (the listing could not say how long idle).
    for age in (MIN, 3 * HOUR):
        reason, why = again(c, [{"id": str(sf(age))}])
        assert reason is None and "has messages" in why
    reason, _ = again({**c, "last_message_id": str(sf(MIN))}, None)
    assert reason is None


class OmitLastMessageId:
    """The real client, with `last_message_id` dropped from every channel it returns (as
    the API may); `list_messages` calls are counted."""

    def __init__(self, rest: DiscordRestClient) -> None:
        self._rest = rest
        self.message_checks: list[str] = []

    async def list_guild_channels(self, guild_id: int | str) -> Any:
        return [unlisted(c) for c in await self._rest.list_guild_channels(guild_id)]

    async def get_channel(self, channel_id: int | str) -> Any:
        return unlisted(await self._rest.get_channel(channel_id))

    async def delete_channel(self, channel_id: int | str) -> Any:
        return await self._rest.delete_channel(channel_id)

    async def list_messages(self, channel_id: int | str, limit: int = 50) -> Any:
        self.message_checks.append(str(channel_id))
        return await self._rest.list_messages(channel_id, limit)


async def test_unlisted_leaks_are_deleted_and_channels_in_use_kept(tmp_path: Path) -> None:
    wrappers: list[OmitLastMessageId] = []

    def wrap(rest: DiscordRestClient) -> OmitLastMessageId:
        wrappers.append(OmitLastMessageId(rest))
        return wrappers[-1]

    async with sim_env(tmp_path, rest_wrapper=wrap) as env:
        leaked = await env.seed(3, age=HOUR)
        in_use = await env.seed(2, age=HOUR, messages=1)
        young = await env.seed(2, age=MIN)
        p = await env.rec.make_plan()
        assert sorted(ids(p.actions)) == sorted(leaked + in_use)  # emptiness unknown yet
        report = await env.rec.apply(p, trigger="test")
        assert sorted(d["id"] for d in report.deleted) == sorted(leaked)
        assert env.channel_ids() == set(in_use + young)
        kept = {s["id"]: s["why"] for s in report.skipped}
        assert all("has messages" in kept[cid] for cid in in_use)
        # One ?limit=1 listing per candidate, none for channels the plan kept.
        assert sorted(wrappers[0].message_checks) == sorted(leaked + in_use)
        assert env.requests("GET /channels/{channel_id}/messages") == len(leaked + in_use)
        assert sorted(r["channel_id"] for r in env.audit()) == sorted(leaked)
