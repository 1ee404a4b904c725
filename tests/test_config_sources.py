"""Where config values come from (DESIGN section 5): `CDP_MONITOR_*`, the file, CDP's own
names from the environment or `cdp.env_file`, the default, in that order; and
`check-config` saying which."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cli import main as cli_main
from monitor.config import ConfigError, load_config_sources, parse_config

MINIMAL = "discord:\n  token: fil3token\n  guild_id: 10\n"


def test_a_paas_needs_no_file_at_all(tmp_path: Path) -> None:
    env = {
        "CDP_MONITOR_DISCORD_TOKEN": "env-token",
        "CDP_MONITOR_DISCORD_GUILD_ID": "42",
        "CDP_MONITOR_GATE_UPSTREAM": "http://cdp:7077",
        "CDP_MONITOR_PROBES_GATEWAY_INTERVAL": "20s",
        "CDP_MONITOR_RECONCILE_PROTECTED_CHANNEL_IDS": "[11, 12]",
        "CDP_MONITOR_CONFIG": "ignored.yaml",  # not a key: ignored
    }
    config = parse_config("", environ=env)
    assert config.discord.token.get_secret_value() == "env-token"
    assert config.discord.guild_id == 42 and config.gate.upstream == "http://cdp:7077"
    assert config.probes.gateway.interval == 20.0
    assert config.reconcile.protected_channel_ids == frozenset({11, 12})


def test_cdps_names_fill_what_the_file_leaves_unset(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# CDP's compose file\n"
        "BOT_TOKEN=cdp-token\n"
        "GUILD_ID=77\n"
        'PROXY_URL="http://10.0.0.9:3128"\n'
        "CHANNEL_AUTO_DEL_TIME=0\n"
        "REQUEST_OUT_TIME=120\n"
        "STREAM_REQUEST_OUT_TIME=600\n"
        "MAX_CHANNEL_DEL_TYPE=OLDEST\n"
        "DEFAULT_CHANNEL_ENABLE=true\n"  # not "1": CDP still creates channels
    )
    path = tmp_path / "monitor.yaml"
    path.write_text("discord:\n  guild_id: 10\ncdp:\n  env_file: .env\n")
    loaded = load_config_sources(path, environ={"GUILD_ID": "99"})
    config, sources = loaded.config, loaded.sources
    assert config.discord.token.get_secret_value() == "cdp-token"
    assert config.discord.guild_id == 10  # the file wins over CDP's name
    assert config.discord.proxy == "http://10.0.0.9:3128"
    assert config.cdp.auto_delete is None  # 0: CDP never deletes
    assert config.cdp.request_timeout == 600.0  # the longer of the two
    assert config.cdp.max_channel_del_type == "OLDEST"
    assert config.cdp.default_channel is False  # "true" is not "1"
    assert sources["discord.token"] == f"CDP's BOT_TOKEN ({tmp_path / '.env'})"
    assert sources["discord.guild_id"] == "file"
    assert sources["gate.listen"] == "default"


def test_precedence_environment_then_file_then_cdp_then_default() -> None:
    env = {"CDP_MONITOR_DISCORD_GUILD_ID": "1", "GUILD_ID": "3", "BOT_TOKEN": "cdp"}
    config = parse_config(MINIMAL, environ=env)
    assert config.discord.guild_id == 1
    assert config.discord.token.get_secret_value() == "fil3token"
    assert parse_config(MINIMAL, environ={"GUILD_ID": "3"}).discord.guild_id == 10
    assert parse_config("discord: {token: t}", environ={"GUILD_ID": "3"}).discord.guild_id == 3
    assert parse_config(MINIMAL, environ={}).cdp.auto_delete == 5.0


def test_auto_delete_never_and_bad_values() -> None:
    never = parse_config(MINIMAL + "cdp:\n  auto_delete: never\n", environ={})
    assert never.cdp.auto_delete is None
    hour = parse_config(MINIMAL, environ={"CHANNEL_AUTO_DEL_TIME": "3600"})
    assert hour.cdp.auto_delete == 3600.0
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + "discord:\n  proxy: ftp://x\n", environ={})
    assert caught.value.problems  # duplicate key or bad scheme: reported, not ignored
    with pytest.raises(ConfigError) as bad:
        parse_config(MINIMAL, environ={"PROXY_URL": "ftp://x:1"})
    assert [p for p, _ in bad.value.problems] == ["discord.proxy"]


def test_a_token_from_the_environment_replaces_a_token_file(tmp_path: Path) -> None:
    text = "discord:\n  token_file: missing-file\n  guild_id: 10\n"
    config = parse_config(
        text, source=tmp_path / "m.yaml", environ={"CDP_MONITOR_DISCORD_TOKEN": "e"}
    )
    assert config.discord.token.get_secret_value() == "e"


def test_check_config_says_where_each_value_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(MINIMAL)
    monkeypatch.setenv("CDP_MONITOR_GATE_UPSTREAM", "http://127.0.0.1:9000")
    assert cli_main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()[1:]}
    assert lines["gate.upstream"] == "environment CDP_MONITOR_GATE_UPSTREAM"
    assert lines["discord.token"] == "file" and lines["gate.max_body"] == "default"
    assert "fil3token" not in out
