"""Discord snowflakes: 64-bit ids whose top 42 bits are ms since the Discord epoch."""

from __future__ import annotations

DISCORD_EPOCH_MS = 1_420_070_400_000


def snowflake_time(snowflake: int | str) -> float:
    """Creation time of a snowflake, in seconds since the Unix epoch."""
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000.0


def make_snowflake(
    unix_seconds: float, worker: int = 0, process: int = 0, increment: int = 0
) -> int:
    """Build a snowflake for a given creation time (used by the simulator)."""
    ms = int(unix_seconds * 1000) - DISCORD_EPOCH_MS
    if ms < 0:
        raise ValueError("time before the Discord epoch")
    return (ms << 22) | ((worker & 0x1F) << 17) | ((process & 0x1F) << 12) | (increment & 0xFFF)


def parse_snowflake(value: object) -> int | None:
    """A Discord id from JSON or config (an int, or a string of ASCII digits, surrounding
    blanks allowed) → int; None for anything else, including 0 and ids of 64 bits or more."""
    if isinstance(value, bool):  # bool is an int subclass
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            return None
        value = int(text)
    if isinstance(value, int) and 0 < value < 2**64:
        return value
    return None
