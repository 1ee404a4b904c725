"""Units of the config language: durations (`500ms`, `15s`, `5m`, `1h`), sizes (`64MiB`),
and `host:port` addresses. One home for each, used by config, control API and messages."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import NamedTuple
from urllib.parse import urlsplit

DURATION_HINT = "must be a duration like 500ms, 15s, 5m, 1h"
SIZE_HINT = "must be a size like 64KiB, 1MiB or a number of bytes"


# -- durations and sizes ----------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: str | float) -> float:
    """`500ms`, `15s`, `5m`, `1h`, `2d`, `1h30m`, or a plain number of seconds → seconds.

    Raises ValueError (whose text names the bad input) for anything else, negatives included.
    """
    if isinstance(value, bool):  # bool is an int; `yes` in YAML is not a duration
        raise ValueError(f"invalid duration {value!r}: {DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION_FULL.fullmatch(text):
            seconds = sum(
                float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(text)
            )
        else:
            raise ValueError(f"invalid duration {value!r}: {DURATION_HINT}")
    else:
        raise ValueError(f"invalid duration {value!r}: {DURATION_HINT}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: {DURATION_HINT}")
    return seconds


def _trim(number: float) -> str:
    text = f"{number:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def format_duration(seconds: float) -> str:
    """Inverse of `parse_duration` at millisecond precision: 0.5 → `500ms`, 5400 → `1h30m`."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{_trim(seconds * 1000)}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = round(secs + (seconds - whole), 3)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if frac:
        out += f"{_trim(frac)}s"
    return out


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+)\s*([A-Za-z]*)")


def parse_size(value: str | int) -> int:
    """`1MiB`, `64KiB`, `1MB`, `512` (bytes) → bytes. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: {SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: {SIZE_HINT}")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"invalid size {value!r}: {SIZE_HINT}")


# -- addresses ---------------------------------------------------------------------------


class HostPort(NamedTuple):
    host: str  # without IPv6 brackets; "" never (validation rejects it)
    port: int


_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_LISTEN_HINT = "must be host:port, like 127.0.0.1:9105 or [::1]:9105"


def split_host_port(address: str) -> HostPort:
    """`host:port` or `[v6]:port` → HostPort. Raises ValueError with a readable reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(_LISTEN_HINT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(_LISTEN_HINT) from None
    elif ":" in host:
        raise ValueError("IPv6 addresses need brackets, like [::1]:9105")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(_LISTEN_HINT)
    port = int(port_text)
    if port > 65535:
        raise ValueError("port must be from 0 to 65535")
    return HostPort(host, port)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback IPs (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def same_endpoint(listen: HostPort, target: HostPort) -> bool:
    """Would connecting to `target` reach a socket bound on `listen`? (loopback-aware)"""
    if listen.port != target.port or listen.port == 0:  # port 0: the OS picks a free one
        return False
    if listen.host.lower() == target.host.lower():
        return True
    if is_loopback_host(target.host):
        return is_wildcard_host(listen.host) or is_loopback_host(listen.host)
    return False


def url_host_port(url: str) -> HostPort:
    parts = urlsplit(url)
    default = 443 if parts.scheme in ("https", "wss") else 80
    return HostPort(parts.hostname or "", parts.port or default)


def url_for(host: str, port: int, scheme: str = "http") -> str:
    """The URL a client uses to reach a socket bound on `host:port` (wildcards → loopback)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    host = host if ":" not in host else f"[{host}]"
    return f"{scheme}://{host}:{port}"
