"""The gate's body classification held to Go's own `encoding/json`, differentially.

tests/go/jsonclassify is a small Go program of ours that decodes each body the way CDP
does (a struct with `ChannelId *string json:"channelId"`, `json.NewDecoder(..).Decode`)
and answers create/nocreate. It is built once per session; without Go the test fails.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.gate.classify import channel_body_creates, go_fold

GO_SRC = Path(__file__).resolve().parent / "go" / "jsonclassify"
MIN_BODIES = 2000


class GoDecoder:
    """The Go program as a long-running line-in, line-out subprocess."""

    def __init__(self, binary: Path) -> None:
        self._proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def creates(self, body: bytes) -> bool:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(base64.b64encode(body).decode() + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        assert answer in ("create", "nocreate"), answer
        return answer == "create"

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=10)


@pytest.fixture(scope="session")
def go_decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoDecoder]:
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain (`go`) is not on PATH: it is needed to build tests/go")
    out = tmp_path_factory.mktemp("go") / "jsonclassify"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    built = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=GO_SRC, env=env, capture_output=True, text=True
    )
    if built.returncode != 0:
        pytest.fail(f"go build of {GO_SRC} failed:\n{built.stderr}")
    decoder = GoDecoder(out)
    yield decoder
    decoder.close()


# -- generated bodies ---------------------------------------------------------------

KEY_SPELLINGS = [
    "channelId",
    "channelid",
    "CHANNELID",
    "ChannelID",
    "chAnnElId",
    "channel_id",
    "channelIdx",
    "channelId ",
    "channel\u0131d",  # dotless i: Go does not fold it to I
    "channel\u0130d",  # dotted capital I
    "\u212aey",  # Kelvin sign
    "\u017fomething",  # long s
    "model",
    "messages",
    "",
]
ESCAPED_KEYS = [
    r"\u0063hannelId",
    r"\u0043HANNELID",
    r"channel\u0049d",
    r"channel\u0069\u0064",
    r"\u0063\u0068annelid",
]
VALUES = [
    b"null",
    b'""',
    b'"  "',
    b'"123"',
    b'"\\u0000"',
    b'"\\u0031"',
    b'"\\ud800"',
    b'"\xff\xfe"',
    b'"\xe2"',
    b"0",
    b"123",
    b"-1.5e3",
    b"true",
    b"false",
    b"[]",
    b'["1"]',
    b"{}",
    b'{"channelId":"1"}',
    b"NaN",
    b"01",
    b'"a\nb"',
    b"1" * 5000,
]


def _key_bytes(key: str) -> bytes:
    return b'"' + key.encode("utf-8") + b'"'


keys = st.one_of(
    st.sampled_from(KEY_SPELLINGS).map(_key_bytes),
    st.sampled_from(ESCAPED_KEYS).map(lambda k: b'"' + k.encode() + b'"'),
    st.text(alphabet="cChHaAnNeElLiIdD\u212a\u017f\u0131", min_size=8, max_size=10).map(_key_bytes),
)
leaf_values = st.one_of(
    st.sampled_from(VALUES), st.text(max_size=6).map(lambda t: _key_bytes(t.replace('"', "")))
)


def _object(members: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in members) + b"}"


values = st.recursive(
    leaf_values,
    lambda inner: st.one_of(
        st.lists(st.tuples(keys, inner), max_size=3).map(_object),
        st.lists(inner, max_size=3).map(lambda vs: b"[" + b",".join(vs) + b"]"),
    ),
    max_leaves=6,
)
spacing = st.sampled_from([b"", b" ", b"\n", b"\t ", b"\r\n"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(st.tuples(keys, values), max_size=5))
    sep = draw(spacing)
    body = b"{" + sep + (b"," + sep).join(k + b":" + sep + v for k, v in members) + b"}"
    top = draw(st.sampled_from(["object", "object", "object", "null", "array", "string", "empty"]))
    if top == "null":
        body = b"null"
    elif top == "array":
        body = b"[" + body + b"]"
    elif top == "string":
        body = b'"' + body.replace(b'"', b"'") + b'"'
    elif top == "empty":
        body = draw(spacing)
    prefix = draw(st.sampled_from([b"", b"", b" ", b"\xef\xbb\xbf", b"\n"]))
    suffix = draw(st.sampled_from([b"", b"", b"x", b"}", b' {"channelId":""}', b"\xff", b"\n"]))
    body = prefix + body + suffix
    if draw(st.integers(0, 9)) == 0:  # a truncated body
        body = body[: draw(st.integers(0, len(body)))]
    return body


# -- tests --------------------------------------------------------------------------

RED_TEAM = [
    b'{"channelId":"123","CHANNELID":""}',
    b'{"channelId":"123","channelid":null}',
    b'{"\\u0063hannelId":""}',
    b'{"channelId":1,"channelId":"2"}',
    b'{"channelId":"  "}',
    b"null",
    b"",
    b"not json",
    b'{"channelId":"1"} trailing',
    b'\xef\xbb\xbf{"channelId":"1"}',
    b'{"x":' + b"1" * 5000 + b',"channelId":"1"}',
]


def test_red_team_bodies_match_go(go_decoder: GoDecoder) -> None:
    for body in RED_TEAM:
        assert channel_body_creates(body) is go_decoder.creates(body), body


def test_case_duplicates_create_like_go() -> None:
    # The red-team finding: the last case-insensitive match wins, so this creates.
    assert channel_body_creates(b'{"channelId":"123","CHANNELID":""}') is True
    assert go_fold("channel\u0131d") != go_fold("channelId")


def test_classifier_agrees_with_go_on_generated_bodies(go_decoder: GoDecoder) -> None:
    seen: list[bytes] = []

    @settings(
        max_examples=MIN_BODIES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(bodies())
    def agree(body: bytes) -> None:
        seen.append(body)
        ours, gos = channel_body_creates(body), go_decoder.creates(body)
        assert ours is gos, f"classifier says {ours}, Go says {gos} for {body!r}"

    agree()
    assert len(seen) >= MIN_BODIES
