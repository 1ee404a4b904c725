"""Config: parsing, defaults, environment, secrets, and the exact message of every invalid case."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from monitor.cli import main as cli_main
from monitor.config import (
    DEFAULT_NAME_PATTERN,
    Config,
    ConfigError,
    DiscordConfig,
    HostPort,
    default_config_path,
    format_duration,
    is_loopback_host,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    split_host_port,
)

ROOT = Path(__file__).resolve().parent.parent
INVALID_DIR = Path(__file__).resolve().parent / "configs" / "invalid"
SECRET = "mfa.SEKRIT-DO-NOT-LEAK"
MINIMAL = f"discord:\n  token: {SECRET}\n  guild_id: 81384788765712384\n"


def errors_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(exc.value).splitlines()


# --- durations and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("30", 30.0),
        (" 10s ", 10.0),
        (7, 7.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15 s", "1.s", "-5s", "5x", "m5", "1h-30m", "inf", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration like 500ms, 15s, 5m, 1h"):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, -1, float("nan"), None, [1]])
def test_parse_duration_rejects_non_durations(value: Any) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.0015, "1.5ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (15, "15s"),
        (90, "1m30s"),
        (300, "5m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (86400, "24h"),
        (3661.25, "1h1m1.25s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10 * 86400 * 1000))
def test_format_duration_round_trips_at_ms_precision(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000, abs=1e-6)


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1MiB", 1048576), ("64KiB", 65536), ("1MB", 1000000), ("512", 512), (2048, 2048)],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1 lots", "MiB", "-1", "1.5MiB", True])
def test_parse_size_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="must be a size like"):
        parse_size(text)


# --- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9105", HostPort("127.0.0.1", 9105)),
        ("[::1]:9105", HostPort("::1", 9105)),
        ("localhost:0", HostPort("localhost", 0)),
        ("0.0.0.0:7077", HostPort("0.0.0.0", 7077)),
    ],
)
def test_split_host_port(text: str, expected: HostPort) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("7077", "must be host:port"),
        (":7077", "must be host:port"),
        ("host:http", "must be host:port"),
        ("::1:9105", "IPv6 addresses need brackets"),
        ("[nothex]:1", "must be host:port"),
        ("1.2.3.4:65536", "port must be from 0 to 65535"),
    ],
)
def test_split_host_port_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        split_host_port(text)


def test_loopback_hosts() -> None:
    assert all(is_loopback_host(h) for h in ["localhost", "127.0.0.1", "127.1.2.3", "::1"])
    assert not any(is_loopback_host(h) for h in ["0.0.0.0", "::", "10.0.0.1", "example.com"])


# --- defaults ---------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MINIMAL)
    cfg = load_config(path, environ={})
    assert cfg.discord.token.get_secret_value() == SECRET
    assert cfg.discord.guild_id == 81384788765712384
    assert cfg.discord.api_base == "https://discord.com/api/v10"
    assert cfg.discord.gateway_url is None
    assert (cfg.probes.gateway.interval, cfg.probes.rest.interval) == (15.0, 30.0)
    assert cfg.probes.cdp.enabled and not cfg.probes.statuspage.enabled
    assert cfg.gate.enabled and cfg.gate.when_open == "reject"
    assert (cfg.gate.listen, cfg.gate.upstream) == ("0.0.0.0:7077", "http://127.0.0.1:7078")
    assert cfg.gate.listen_address == HostPort("0.0.0.0", 7077)
    assert cfg.gate.max_concurrent_creates == 8
    assert cfg.gate.max_body == 64 * 1024 * 1024  # CDP takes base64 images
    assert (cfg.health.window, cfg.health.min_samples) == (120.0, 3)
    assert (cfg.breaker.reset_timeout, cfg.breaker.success_threshold) == (60.0, 2)
    assert cfg.reconcile.interval == 300.0
    assert cfg.reconcile.name_pattern == DEFAULT_NAME_PATTERN
    assert cfg.reconcile.name_regex.match("cdp-chat-abc123")
    # CDP's legacy names (v4.0.8-v4.4.2, and before): no hyphen after the prefix.
    assert cfg.reconcile.name_regex.match("cdp-对话202402081340135422918704mmjhbyu")
    assert cfg.reconcile.name_regex.match("对话2024020814301577792016pxffozvi")
    # ... but a server's own channels named like that are not CDP's.
    for name in ("对话", "对话区", "cdp-对话", "cdp-对话-abc123", "对话-general"):
        assert not cfg.reconcile.name_regex.match(name)
    # CDP's own defaults: CHANNEL_AUTO_DEL_TIME 5 s, 5 m reply timeout, 3 x 60 s creation.
    assert (cfg.cdp.auto_delete, cfg.cdp.request_timeout) == (5.0, 300.0)
    assert cfg.cdp.request_lifetime == 480.0 and cfg.cdp.max_channel_del_type is None
    assert not cfg.reconcile.name_regex.match("general")
    assert cfg.reconcile.protected_channel_ids == frozenset()
    assert (cfg.reconcile.min_age, cfg.reconcile.max_deletes_per_run) == (600.0, 100)
    assert cfg.reconcile.dry_run is False and cfg.reconcile.high_watermark == 0.8
    assert cfg.control.listen == "127.0.0.1:9105" and cfg.control.token is None
    assert cfg.cdp_url == "http://127.0.0.1:7078"
    # Relative paths, the default state_dir included, hang off the config file's directory.
    assert cfg.state_dir == tmp_path / "state"
    assert (cfg.log.level, cfg.log.format) == ("info", "text")


def test_defaults_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL, source=tmp_path / "m.yaml", environ={})
    dumped = cfg.model_dump(mode="json")
    assert dumped["discord"]["token"] == "**********"
    dumped["discord"]["token"] = SECRET
    again = parse_config(yaml.safe_dump(dumped), source=tmp_path / "m.yaml", environ={})
    assert again == cfg


def test_empty_sections_take_defaults() -> None:
    cfg = parse_config(MINIMAL + "gate:\nprobes:\n  gateway:\nlog: {}\n", environ={})
    ref = parse_config(MINIMAL, environ={})
    assert (cfg.gate, cfg.probes, cfg.log) == (ref.gate, ref.probes, ref.log)


def test_config_is_frozen() -> None:
    cfg = parse_config(MINIMAL, environ={})
    with pytest.raises(ValidationError):
        cfg.gate.enabled = False


def test_values_are_converted() -> None:
    cfg = parse_config(
        MINIMAL
        + """  api_base: http://127.0.0.1:8080/api/v10/
gate:
  when_open: HOLD
  hold_max: 1m30s
  max_body: 64KiB
  create_rate: 2.5
reconcile:
  protected_channel_ids: ["81384788765712385", 81384788765712386]
  stale_after: 1d
probes:
  gateway: {interval: 20, slow: 500ms}
log: {level: DEBUG, format: json}
""",
        environ={},
    )
    assert cfg.discord.api_base == "http://127.0.0.1:8080/api/v10"  # trailing / dropped
    assert cfg.gate.when_open == "hold" and cfg.gate.hold_max == 90.0
    assert cfg.gate.max_body == 65536 and cfg.gate.create_rate == 2.5
    assert cfg.reconcile.protected_channel_ids == {81384788765712385, 81384788765712386}
    assert cfg.reconcile.stale_after == 86400.0
    assert (cfg.probes.gateway.interval, cfg.probes.gateway.slow) == (20.0, 0.5)
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")


def test_public_control_listen_with_token_and_ipv6_loopback() -> None:
    cfg = parse_config(MINIMAL + "control: {listen: '0.0.0.0:9105', token: abc}\n", environ={})
    assert cfg.control.token is not None and cfg.control.token.get_secret_value() == "abc"
    cfg = parse_config(MINIMAL + "control: {listen: '[::1]:9105'}\n", environ={})
    assert cfg.control.listen_address == HostPort("::1", 9105)


@pytest.mark.parametrize(
    ("listen", "upstream", "loop"),
    [
        ("0.0.0.0:7077", "http://127.0.0.1:7077", True),
        ("127.0.0.1:7077", "http://localhost:7077", True),
        ("[::]:80", "http://[::1]", True),
        ("0.0.0.0:7077", "http://127.0.0.1:7078", False),
        ("127.0.0.1:7077", "http://10.0.0.5:7077", False),
        ("0.0.0.0:443", "https://cdp.internal", False),
        ("127.0.0.1:0", "http://127.0.0.1:0", False),  # port 0: a free port, never a clash
    ],
)
def test_gate_loop_detection(listen: str, upstream: str, loop: bool) -> None:
    text = MINIMAL + f"gate: {{listen: '{listen}', upstream: '{upstream}'}}\n"
    if loop:
        with pytest.raises(ConfigError) as exc:
            parse_config(text, environ={})
        assert exc.value.problems[0][0] == "gate.upstream"
    else:
        assert parse_config(text, environ={}).gate.upstream == upstream


def test_cdp_log_sources(tmp_path: Path) -> None:
    cfg = parse_config(
        MINIMAL + "signals:\n  cdp_log: {enabled: true, file: logs/cdp.log}\n",
        source=tmp_path / "m.yaml",
        environ={},
    )
    assert cfg.signals.cdp_log.file == tmp_path / "logs" / "cdp.log"
    cfg = parse_config(
        MINIMAL + "signals:\n  cdp_log: {enabled: true, command: [docker, logs, -f, cdp]}\n",
        environ={},
    )
    assert cfg.signals.cdp_log.command == ("docker", "logs", "-f", "cdp")
    with pytest.raises(ConfigError) as exc:
        parse_config(MINIMAL + "signals:\n  cdp_log: {file: a.log, command: [cat]}\n", environ={})
    assert errors_of(exc) == [
        "signals.cdp_log.command: set only one of file, glob or command (file is set)"
    ]
    cfg = parse_config(
        MINIMAL + "signals:\n  cdp_log: {enabled: true, glob: logs/log-*.log}\n",
        source=tmp_path / "monitor.yaml",
        environ={},
    )
    assert cfg.signals.cdp_log.glob == tmp_path / "logs" / "log-*.log"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("never", None), (0, None), (-1, None), ("-5", None), ("0s", None), (5, 5.0), ("1h", 3600.0)],
)
def test_cdp_auto_delete_never_is_cdp_zero_or_negative(
    value: object, seconds: float | None
) -> None:
    # CDP: CHANNEL_AUTO_DEL_TIME 0 or negative never deletes (chat.go:193-199).
    cfg = parse_config(MINIMAL + f"cdp:\n  auto_delete: {value}\n", environ={})
    assert cfg.cdp.auto_delete == seconds


def test_cdp_section_rejects_bad_values() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(
            MINIMAL + "cdp:\n  auto_delete: soon\n  max_channel_del_type: some\n", environ={}
        )
    text = "\n".join(errors_of(exc))
    assert "cdp.auto_delete" in text and "cdp.max_channel_del_type" in text
    cfg = parse_config(MINIMAL + "cdp:\n  max_channel_del_type: oldest\n", environ={})
    assert cfg.cdp.max_channel_del_type == "OLDEST"
    with pytest.raises(ConfigError):  # gone: cdp.auto_delete replaces it
        parse_config(MINIMAL + "reconcile:\n  cdp_auto_delete: 5s\n", environ={})


def test_actions() -> None:
    cfg = parse_config(
        MINIMAL
        + "actions:\n  on_open:\n    - exec: [notify, open]\n"
        + "    - webhook: https://hooks.example.com/x?k=1\n  timeout: 3s\n",
        environ={},
    )
    assert [a.exec for a in cfg.actions.on_open] == [("notify", "open"), None]
    assert cfg.actions.on_open[1].webhook == "https://hooks.example.com/x?k=1"
    assert cfg.actions.on_close == () and cfg.actions.timeout == 3.0


# --- environment ------------------------------------------------------------------------


def test_env_expansion() -> None:
    text = """
discord:
  token: ${TOKEN}
  guild_id: ${GUILD}
  api_base: http://${SIM_HOST:-127.0.0.1}:${SIM_PORT:-9999}/api/v10
gate:
  max_concurrent_creates: ${CREATES:-4}
  enabled: ${GATE_ON:-false}
reconcile:
  protected_channel_ids: ${PROTECTED}
  name_pattern: ^tmp-$${literal}-\\d+$
control:
  token: ${CONTROL_TOKEN:-}
"""
    env = {
        "TOKEN": SECRET,
        "GUILD": "81384788765712384",
        "SIM_HOST": "",  # empty counts as unset for :-
        "SIM_PORT": "8080",
        "PROTECTED": "81384788765712385, 81384788765712386",
    }
    cfg = parse_config(text, environ=env)
    assert cfg.discord.token.get_secret_value() == SECRET
    assert cfg.discord.guild_id == 81384788765712384
    assert cfg.discord.api_base == "http://127.0.0.1:8080/api/v10"
    assert cfg.gate.max_concurrent_creates == 4 and cfg.gate.enabled is False
    assert cfg.reconcile.protected_channel_ids == {81384788765712385, 81384788765712386}
    assert cfg.reconcile.name_pattern == r"^tmp-${literal}-\d+$"
    assert cfg.control.token is None


def test_both_listeners_on_free_ports() -> None:
    text = MINIMAL + "gate: {listen: '127.0.0.1:0'}\ncontrol: {listen: '127.0.0.1:0'}\n"
    assert parse_config(text, environ={}).control.listen_address == HostPort("127.0.0.1", 0)


def test_nested_env_reference_is_an_error() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(MINIMAL + "log: {level: '${A:-${B}}'}\n", environ={})
    assert errors_of(exc) == ["log.level: bad ${...} reference (write ${NAME} or ${NAME:-default})"]


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDPMON_TEST_GUILD", "42")
    cfg = parse_config(f"discord: {{token: {SECRET}, guild_id: '${{CDPMON_TEST_GUILD}}'}}\n")
    assert cfg.discord.guild_id == 42


def test_state_directory_from_systemd(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL, environ={"STATE_DIRECTORY": "/var/lib/cdp-monitor:/other"})
    assert cfg.state_dir == Path("/var/lib/cdp-monitor")
    cfg = parse_config(MINIMAL + "state_dir: /srv/x\n", environ={"STATE_DIRECTORY": "/a"})
    assert cfg.state_dir == Path("/srv/x")


def test_default_config_path() -> None:
    assert default_config_path({}) == Path("monitor.yaml")
    assert default_config_path({"CDP_MONITOR_CONFIG": ""}) == Path("monitor.yaml")
    assert default_config_path({"CDP_MONITOR_CONFIG": "/etc/x.yaml"}) == Path("/etc/x.yaml")


# --- secrets from files -----------------------------------------------------------------


def _write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "conf" / "monitor.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    return path


def test_token_file_relative_to_config(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path, "discord: {token_file: secrets/dt, guild_id: 1}\ncontrol: {token_file: ct}\n"
    )
    (path.parent / "secrets").mkdir()
    (path.parent / "secrets" / "dt").write_text(SECRET + "\n")
    (path.parent / "ct").write_text("control-secret\n")
    cfg = load_config(path, environ={})
    assert cfg.discord.token.get_secret_value() == SECRET
    assert cfg.discord.token_file == path.parent / "secrets" / "dt"
    assert cfg.control.token is not None
    assert cfg.control.token.get_secret_value() == "control-secret"


def test_token_file_prefers_credentials_directory(tmp_path: Path) -> None:
    path = _write_config(tmp_path, "discord: {token_file: dt, guild_id: 1}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dt").write_text("from-credentials")
    (path.parent / "dt").write_text("from-config-dir")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load_config(path, environ=env).discord.token.get_secret_value() == "from-credentials"
    (creds / "dt").unlink()  # not there: fall back to the config file's directory
    assert load_config(path, environ=env).discord.token.get_secret_value() == "from-config-dir"


def test_token_file_absolute_and_from_env(tmp_path: Path) -> None:
    secret = tmp_path / "abs-token"
    secret.write_text(SECRET)
    path = _write_config(tmp_path, "discord: {token_file: '${TF}', guild_id: 1}\n")
    cfg = load_config(path, environ={"TF": str(secret)})
    assert cfg.discord.token.get_secret_value() == SECRET


def test_token_file_empty(tmp_path: Path) -> None:
    path = _write_config(tmp_path, "discord: {token_file: dt, guild_id: 1}\n")
    (path.parent / "dt").write_text("\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert errors_of(exc) == [f"discord.token_file: file is empty: {path.parent / 'dt'}"]


# --- secrecy ----------------------------------------------------------------------------


def test_token_never_in_repr_str_or_dump() -> None:
    cfg = parse_config(MINIMAL + "control: {token: control-SEKRIT}\n", environ={})
    for text in (repr(cfg), str(cfg), repr(cfg.discord), cfg.model_dump_json()):
        assert "SEKRIT" not in text


def test_token_never_in_errors() -> None:
    bad = [
        f"discord: {{token: 'Bot {SECRET}', guild_id: 1}}",
        f"discord: {{token: '{SECRET} x', guild_id: 1}}",
        f"discord: {{token: {SECRET}, guild_id: 1, token_file: f}}",
        f"discord: {{token: [{SECRET}], guild_id: 1}}",
        f"discord: {{token: {SECRET}, guild_id: {SECRET}}}",
        f"discord: {{token: {SECRET}}}\ngate: {{when_open: {SECRET}}}",
        f"discord:\n  token: {SECRET}: oops\n",
        f'discord:\n  token: "{SECRET}\\q"\n',
    ]
    for text in bad:
        with pytest.raises(ConfigError) as exc:
            parse_config(text, environ={})
        assert exc.value.problems  # something was reported ...
        assert "SEKRIT" not in str(exc.value)  # ... without the token


def test_direct_construction_hides_token() -> None:
    d = DiscordConfig(token=SECRET, guild_id=1)  # type: ignore[arg-type]
    assert SECRET not in repr(d) and d.token.get_secret_value() == SECRET


# --- files ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml")
    assert errors_of(exc) == [f"config file not found: {tmp_path / 'nope.yaml'}"]
    assert exc.value.problems == [("", f"config file not found: {tmp_path / 'nope.yaml'}")]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert errors_of(exc) == [f"cannot read config file {tmp_path}: Is a directory"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"discord:\n  token: \xff\xfe\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert errors_of(exc) == [f"config file is not UTF-8 text: {path}"]


INVALID_CASES = sorted(p.stem for p in INVALID_DIR.glob("*.yaml"))


def test_invalid_cases_have_expectations() -> None:
    assert len(INVALID_CASES) >= 12
    assert INVALID_CASES == sorted(p.stem for p in INVALID_DIR.glob("*.expected"))


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_config(case: str) -> None:
    path = INVALID_DIR / f"{case}.yaml"
    expected = (INVALID_DIR / f"{case}.expected").read_text().rstrip("\n")
    expected = expected.replace("{dir}", str(INVALID_DIR))
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value) == expected
    assert "SEKRIT" not in str(exc.value)
    # Every problem is a (dotted.path, reason) pair and the message lists each one.
    assert [f"{p}: {r}" if p else r for p, r in exc.value.problems] == expected.splitlines()


# --- reconcile.name_pattern and YAML aliases ---------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        ".*",
        "cdp",
        "cdp-chat-",
        "^",
        "^.*",
        "^cdp",
        "^[a-z]",
        "^(?!cdp-chat-)",
        "^cdp-chat-|^general",
        "^\\w*",
        "^(|cdp-chat-)",
    ],
)
def test_name_pattern_matching_ordinary_channels_is_an_error(pattern: str) -> None:
    # Red team: `.*`, `""` and `cdp` passed check-config; `.*` planned to delete `general`.
    with pytest.raises(ConfigError) as exc:
        parse_config(MINIMAL + f"reconcile:\n  name_pattern: '{pattern}'\n", environ={})
    (path, reason), *_ = exc.value.problems
    assert path == "reconcile.name_pattern"
    assert "anchored" in reason or "matches ordinary channel names" in reason


@pytest.mark.parametrize(
    "pattern", [DEFAULT_NAME_PATTERN, "^cdp-chat-", "^cdp-chat-\\d+$", "^tmp-", "^cdp-对话"]
)
def test_name_patterns_for_cdp_channels_are_accepted(pattern: str) -> None:
    cfg = parse_config(MINIMAL + f"reconcile:\n  name_pattern: '{pattern}'\n", environ={})
    assert cfg.reconcile.name_pattern == pattern


def test_alias_bomb_is_refused_by_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    # Red team: a billion-laughs file stalled a reload for seconds, check-config for minutes.
    path = INVALID_DIR / "alias_bomb.yaml"
    assert cli_main(["check-config", "-c", str(path)]) != 0
    assert "aliases expand it past" in capsys.readouterr().err


def test_aliases_within_the_cap_still_work() -> None:
    text = (
        f"discord:\n  token: {SECRET}\n  guild_id: &g 81384788765712384\n"
        "reconcile:\n  protected_channel_ids: [*g]\n"
    )
    cfg = parse_config(text, environ={})
    assert cfg.reconcile.protected_channel_ids == {81384788765712384}
    recursive = MINIMAL + "reconcile: &r\n  protected_channel_ids: [*r]\n"
    with pytest.raises(ConfigError, match="aliases expand it past"):
        parse_config(recursive, environ={})


# --- the documented example -------------------------------------------------------------

EXAMPLE = ROOT / "monitor.yaml"
EXAMPLE_ENV = {"CDP_MONITOR_DISCORD_TOKEN": SECRET, "CDP_GUILD_ID": "81384788765712384"}


def test_example_loads_with_defaults() -> None:
    cfg = load_config(EXAMPLE, environ=EXAMPLE_ENV)
    assert cfg.discord.token.get_secret_value() == SECRET
    assert cfg.gate.listen == "0.0.0.0:7077" and cfg.gate.upstream == "http://127.0.0.1:7078"
    assert cfg.state_dir == ROOT / "state"
    # Every value written there is the default: the file documents defaults, nothing else.
    ref = parse_config(MINIMAL, source=EXAMPLE, environ={})
    assert cfg.model_dump(exclude={"discord": {"token"}}) == ref.model_dump(
        exclude={"discord": {"token"}}
    )


def test_example_with_systemd_environment() -> None:
    env = {
        **EXAMPLE_ENV,
        "STATE_DIRECTORY": "/var/lib/cdp-monitor",
        "CDP_MONITOR_CONTROL_TOKEN": "t",
    }
    cfg = load_config(EXAMPLE, environ=env)
    assert cfg.state_dir == Path("/var/lib/cdp-monitor")
    assert cfg.control.token is not None


def _schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.add(path)
        for sub in _models_in(field.annotation):
            keys |= _schema_keys(sub, path + ".")
    return keys


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        args = args[:1]
    elif not (
        args and typing.get_origin(annotation) in (tuple, list, typing.Union, types.UnionType)
    ):
        return []
    return [m for arg in args for m in _models_in(arg)]


def _yaml_keys(value: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for name, sub in value.items():
            keys.add(f"{prefix}{name}")
            keys |= _yaml_keys(sub, f"{prefix}{name}.")
    elif isinstance(value, list):
        for item in value:
            keys |= _yaml_keys(item, prefix)
    return keys


def test_example_documents_every_key() -> None:
    # Commented-out alternatives (`# token_file: ...`) count: uncomment them, then compare.
    text = EXAMPLE.read_text()
    uncommented = re.sub(r"(?m)^(\s*)# ?(\s*(?:- )?[a-z_]+:(?: .*)?)$", r"\1\2", text)
    documented = _yaml_keys(yaml.safe_load(uncommented))
    schema = _schema_keys(Config)
    assert "actions.on_open.exec" in schema and "signals.cdp_log.command" in schema
    assert schema - documented == set(), "keys missing from monitor.yaml"
    assert documented - schema == set(), "monitor.yaml documents keys that do not exist"


def test_example_explains_every_key() -> None:
    # Every key but a top-level section header has its why on the comment line above.
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[a-z_]+:", line) and not re.match(r"^[a-z_]+:\s*$", line):
            above = lines[i - 1].strip()
            assert above.startswith("#"), f"line {i + 1} ({line.strip()}) has no comment above"


def test_webhook_url_not_in_repr() -> None:
    cfg = parse_config(
        MINIMAL + "actions:\n  on_open: [{webhook: 'https://hooks.example.com/T0/SEKRIT'}]\n",
        environ={},
    )
    assert "SEKRIT" not in repr(cfg)
    assert cfg.actions.on_open[0].webhook == "https://hooks.example.com/T0/SEKRIT"
