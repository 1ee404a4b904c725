"""Which requests CDP would create a Discord channel for (DESIGN section 7), decided the
way CDP itself decides, so that no spelling of a request slips past the gate.

Two things are read exactly as CDP reads them:

- the path: CDP (gin) routes on the percent-decoded path. The gate forwards the raw
  request target unchanged, and refuses targets whose meaning depends on who normalises
  them (dot segments, empty segments, encoded or back slashes), so the path classified
  is the path CDP receives.
- the body: CDP decodes it with Go's `encoding/json` into a struct whose `channelId` is
  a `*string` (coze-discord-proxy `model/openai.go:10-12`, decoded with
  `json.NewDecoder(body).Decode(&request)` in `controller/chat.go`). Go matches keys
  exactly or else case-insensitively (`encoding/json/fold.go`), the last matching key
  wins, `null` resets the pointer, a value of another type is a decode error (CDP answers
  500 and creates nothing), and bytes after the first JSON value are never read.
  tests/test_gate_classify_go.py holds this module to Go's own decoder.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_to_bytes

CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/images/generations"})
THREAD_CREATE_PATH = "/api/thread/create"  # makes a thread: not one of the 500 channels
EXPLICIT_CREATE_PATHS = frozenset({"/api/channel/create", THREAD_CREATE_PATH})

_FIELD = "CHANNELID"  # the field's name as Go folds it
# Non-ASCII runes Go's foldRune maps to an ASCII letter (computed over every rune with
# Go's unicode tables): Kelvin sign and long s. Any other non-ASCII rune folds to a
# non-ASCII one, so it can never match an ASCII field name.
_GO_FOLD_TO_ASCII = {"\u212a": "K", "\u017f": "S"}
_GO_SPACE = " \t\n\r"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# A path containing none of these needs no decoding and has no ambiguous segment.
_SLOW_PATH_MARKS = ("%", "\\", "/.", "//", "\x00")


class _Object(list[tuple[str, object]]):
    """A decoded JSON object: its members in order, duplicates kept."""


_DECODER = json.JSONDecoder(
    # Numbers are only skipped: no int/float conversion (Python refuses ints over 4,300
    # digits, which Go accepts), and NaN/Infinity are not JSON for Go.
    parse_int=lambda _s: 0,
    parse_float=lambda _s: 0,
    parse_constant=lambda s: _raise(ValueError(f"not JSON: {s}")),
    object_pairs_hook=lambda pairs: _Object(pairs),
)


def _raise(exc: Exception) -> object:
    raise exc


def go_fold(key: str) -> str:
    """A JSON key folded as Go's `encoding/json` folds names for matching."""
    out: list[str] = []
    for ch in key:
        if ch < "\x80":
            out.append(ch.upper())
        else:
            out.append(_GO_FOLD_TO_ASCII.get(ch, ch))
    return "".join(out)


def routed_path(target: str) -> str | None:
    """The path CDP routes `target` (a raw request target) to, or None when the target is
    ambiguous and must be refused: not origin-form, dot or empty segments, encoded or
    back slashes, a NUL, a malformed percent escape."""
    path = target.split("?", 1)[0]
    if path[:1] == "/" and not any(c in path for c in _SLOW_PATH_MARKS):
        return path  # nothing to decode or normalise: the common case, taken fast
    if not path.startswith("/") or "\\" in path or _BAD_ESCAPE.search(path):
        return None
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        return None
    decoded = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
    segments = decoded.split("/")[1:]
    if segments and segments[-1] == "":
        segments = segments[:-1]  # one trailing slash: gin redirects it to the route
    if any(seg in ("", ".", "..") for seg in segments):
        return None
    return decoded


def channel_body_creates(body: bytes) -> bool:
    """Whether CDP, decoding `body` as a chat or images request, would go on to create a
    channel: the decode succeeds and `channelId` ends up null, absent or ""."""
    text = body.decode("utf-8", "replace").lstrip(_GO_SPACE)
    if not text:
        return False  # io.EOF: a decode error
    try:
        data, _end = _DECODER.raw_decode(text)
    except ValueError:
        return False  # a syntax error: CDP answers 500 before creating anything
    except RecursionError:
        return True  # deeper than Python parses; Go may accept it: count it as a create
    if data is None:
        return True  # `null` decodes into the struct as a no-op
    if not isinstance(data, _Object):
        return False  # an array, string, number or bool: a type error
    channel_id: str | None = None
    for key, value in data:
        # Folding keeps the length: a key of another length never matches.
        if key != "channelId" and (len(key) != len(_FIELD) or go_fold(key) != _FIELD):
            continue
        if value is None:
            channel_id = None
        elif isinstance(value, str):
            channel_id = value
        else:
            return False  # a type error fails the whole decode, whatever comes later
    return not channel_id


def is_create_request(method: str, path: str, body: bytes, *, cdp_default_channel: bool) -> bool:
    """Whether CDP would create a channel for this request (DESIGN section 7). `path` is
    the decoded path from :func:`routed_path`."""
    if method != "POST":
        return False
    path = path.rstrip("/") or "/"
    if path in EXPLICIT_CREATE_PATHS:
        return True
    if path not in CHAT_PATHS or cdp_default_channel:
        return False
    return channel_body_creates(body)


def request_kind(method: str, path: str, body: bytes, *, cdp_default_channel: bool) -> str:
    """`create` (a channel), `thread` (`POST /api/thread/create`) or `other`."""
    if method == "POST" and (path.rstrip("/") or "/") == THREAD_CREATE_PATH:
        return "thread"
    if is_create_request(method, path, body, cdp_default_channel=cdp_default_channel):
        return "create"
    return "other"


_INSPECTED = CHAT_PATHS | EXPLICIT_CREATE_PATHS


def body_inspected(method: str, path: str) -> bool:
    """Whether the gate must read this request's body to classify it (the rest stream)."""
    return method == "POST" and (path.rstrip("/") or "/") in _INSPECTED
