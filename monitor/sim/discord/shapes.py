"""The JSON shapes of the simulator's objects as Discord sends them: users, channels,
messages (with mentions, `message_reference` and components), the guild of GUILD_CREATE,
and the application of `/oauth2/applications/@me` and READY."""

from __future__ import annotations

import re
from typing import Any

from monitor.discord.snowflake import snowflake_time
from monitor.sim.discord.models import Channel, Message, SimSettings, iso

MENTION = re.compile(r"<@!?(\d+)>")


def user_json(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(user_id),
        "username": name,
        "avatar": None,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "global_name": None,
        "primary_guild": None,
    }
    if bot:
        out["bot"] = True
    return out


def channel_json(c: Channel, *, with_last_message_id: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(c.id),
        "type": c.type,
        "flags": 0,
        "guild_id": str(c.guild_id),
        "name": c.name,
        "parent_id": None if c.parent_id is None else str(c.parent_id),
        "position": c.position,
        "permission_overwrites": [],
    }
    if c.type in (0, 5, 15):
        out.update(topic=None, nsfw=False, rate_limit_per_user=0)
        if with_last_message_id:
            out["last_message_id"] = None if c.last_message_id is None else str(c.last_message_id)
    if c.type in (2, 13):
        out.update(bitrate=64000, user_limit=0, rtc_region=None)
    return out


def message_json(m: Message, channel: Channel) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": 19 if m.reference is not None else 0,  # 19: a reply
        "content": m.content,
        "mentions": [user_json(int(uid), f"user-{uid}") for uid in MENTION.findall(m.content)],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "timestamp": iso(snowflake_time(m.id)),
        "edited_timestamp": None if m.edited_at is None else iso(m.edited_at),
        "flags": 0,
        "components": m.components,
        "id": str(m.id),
        "channel_id": str(channel.id),
        "author": user_json(m.author_id, m.author_name, bot=m.bot),
        "pinned": False,
        "mention_everyone": False,
        "tts": False,
    }
    if m.reference is not None:
        out["message_reference"] = {
            "type": 0,
            "message_id": str(m.reference),
            "channel_id": str(channel.id),
            "guild_id": str(channel.guild_id),
        }
    return out


def application_json(s: SimSettings) -> dict[str, Any]:
    return {
        "id": str(s.bot_user_id),
        "name": "cdp-bot",
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "bot_public": False,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "flags": 0,
        "owner": user_json(s.bot_user_id + 1, "owner"),
        "team": None,
        "bot": user_json(s.bot_user_id, "cdp-bot", bot=True),
        "rpc_origins": [],
        "redirect_uris": [],
        "tags": [],
    }


def guild_json(s: SimSettings, channels: list[dict[str, Any]], joined: float) -> dict[str, Any]:
    """The guild as GUILD_CREATE carries it (the bot is its only member listed)."""
    gid = str(s.guild_id)
    everyone = {
        "id": gid,
        "name": "@everyone",
        "permissions": "0",
        "position": 0,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }
    me = {"user": user_json(s.bot_user_id, "cdp-bot", bot=True), "roles": [], "deaf": False}
    me.update(mute=False, joined_at=iso(joined), flags=0)
    return {
        "id": gid,
        "name": "cdp-guild",
        "icon": None,
        "owner_id": str(s.bot_user_id + 1),
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "preferred_locale": "en-US",
        "features": [],
        "roles": [everyone],
        "emojis": [],
        "stickers": [],
        "member_count": 1,
        "members": [me],
        "channels": channels,
        "threads": [],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "large": False,
        "unavailable": False,
        "joined_at": iso(joined),
    }
