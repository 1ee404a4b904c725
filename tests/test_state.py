from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import StateError
from monitor.ledger import LEDGER_FILE, load_entries
from monitor.state import BreakerRecord, PauseRecord, StateDir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_private_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "state"
    sd = StateDir(target)
    assert sd.path == target
    assert target.is_dir()
    assert _mode(target) == 0o700


def test_existing_directory_is_used_as_is(tmp_path: Path) -> None:
    tmp_path.joinpath("f").write_text("{}")
    sd = StateDir(tmp_path)
    assert sd.read_json("f") == {}


def test_uncreatable_directory_raises_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError) as exc:
        StateDir(blocker / "state")
    assert exc.value.path == str(blocker / "state")


def test_write_then_read_json_roundtrip(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "s")
    sd.write_json("ledger.json", {"a": [1, 2], "b": None})
    assert sd.read_json("ledger.json") == {"a": [1, 2], "b": None}
    # No temp files left behind, and the file is private like the directory.
    assert sorted(p.name for p in sd.path.iterdir()) == ["ledger.json"]
    assert _mode(sd.path / "ledger.json") == 0o600


def test_write_replaces_previous_content(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    sd.write_json("x.json", {"v": 1})
    sd.write_json("x.json", {"v": 2})
    assert sd.read_json("x.json") == {"v": 2}


def test_failed_rename_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = StateDir(tmp_path / "s")
    sd.write_json("x.json", {"v": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StateError, match="No space left"):
        sd.write_json("x.json", {"v": 2})
    assert sd.read_json("x.json") == {"v": 1}
    assert sorted(p.name for p in sd.path.iterdir()) == ["x.json"]


def test_unserializable_object_leaves_nothing_behind(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "s")
    sd.write_json("x.json", {"v": 1})
    with pytest.raises(TypeError):
        sd.write_json("x.json", {"v": object()})
    assert sd.read_json("x.json") == {"v": 1}
    assert sorted(p.name for p in sd.path.iterdir()) == ["x.json"]


def test_write_fsyncs_file_before_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = StateDir(tmp_path / "s")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def spy_replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    sd.write_json("x.json", [1])
    # File data synced, then renamed, then the directory synced.
    assert events == ["fsync", "replace", "fsync"]


def test_missing_file_reads_as_none(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    assert sd.read_json("nope.json") is None
    assert sd.load_pause() is None
    assert sd.load_breaker() is None


@pytest.mark.parametrize("content", ["{not json", "", '{"reason": "x", "since": 1', "\xff\xfe"])
def test_corrupt_file_is_logged_and_treated_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    sd = StateDir(tmp_path)
    (tmp_path / "pause.json").write_bytes(content.encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="monitor.state"):
        assert sd.load_pause() is None
    assert "pause.json" in caplog.text


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        {"reason": "x"},
        {"reason": 3, "since": 1.0},
        {"reason": "x", "since": True},
        {"reason": "x", "since": 1.0, "until": "tomorrow"},
    ],
)
def test_wrong_shape_pause_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, obj: Any
) -> None:
    sd = StateDir(tmp_path)
    sd.write_json("pause.json", obj)
    with caplog.at_level(logging.WARNING, logger="monitor.state"):
        assert sd.load_pause() is None
    assert "unexpected content" in caplog.text


@pytest.mark.parametrize(
    "obj",
    [
        {"state": "forced_open", "since": 1.0, "trips": 0},
        {"state": "open", "since": 1.0, "trips": -1},
        {"state": "open", "since": 1.0, "trips": 1.5},
        {"state": "closed", "trips": 0},
        {"state": "closed", "since": 1.0, "trips": 0, "last_transition": "x"},
    ],
)
def test_wrong_shape_breaker_is_ignored(tmp_path: Path, obj: Any) -> None:
    sd = StateDir(tmp_path)
    sd.write_json("breaker.json", obj)
    assert sd.load_breaker() is None


def test_pause_roundtrip_and_clear(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    rec = PauseRecord(reason="discord incident", until=1_700_000_600.0, since=1_700_000_000.0)
    sd.save_pause(rec)
    assert sd.load_pause() == rec
    sd.save_pause(PauseRecord(reason="", until=None, since=5.0))
    assert sd.load_pause() == PauseRecord(reason="", until=None, since=5.0)
    sd.save_pause(None)
    assert not (tmp_path / "pause.json").exists()
    assert sd.load_pause() is None
    sd.save_pause(None)  # clearing twice is fine


def test_breaker_record_roundtrip(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    rec = BreakerRecord(
        state="open",
        since=100.0,
        trips=3,
        opened_at=100.0,
        closed_since=None,
        last_transition={"from": "half_open", "to": "open", "reason": "r", "at": 100.0},
    )
    sd.save_breaker(rec)
    assert sd.load_breaker() == rec
    on_disk = json.loads((tmp_path / "breaker.json").read_text())
    assert on_disk["trips"] == 3 and on_disk["state"] == "open"


def test_audit_appends_one_line_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = StateDir(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    records = [
        {"action": "delete", "channel_id": str(i), "name": f"cdp-chat-{i}"} for i in range(3)
    ]
    for r in records:
        sd.append_audit(r)
    assert len(synced) == 3
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert list(sd.read_audit()) == records
    assert _mode(tmp_path / "audit.jsonl") == 0o600


def test_audit_reader_skips_torn_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = StateDir(tmp_path)
    sd.append_audit({"n": 1})
    with (tmp_path / "audit.jsonl").open("a") as f:
        f.write('{"n": 2, "trunc')  # a crash mid-write
    sd.append_audit({"n": 3})
    with caplog.at_level(logging.WARNING, logger="monitor.state"):
        assert [r["n"] for r in sd.read_audit()] == [1, 3]
    assert "corrupt audit line" in caplog.text


def test_audit_unserializable_record_writes_nothing(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    with pytest.raises(TypeError):
        sd.append_audit({"bad": object()})
    assert not (tmp_path / "audit.jsonl").exists()


@pytest.mark.parametrize("name", ["", "../x.json", "a/b.json", ".hidden"])
def test_names_cannot_escape_the_directory(tmp_path: Path, name: str) -> None:
    sd = StateDir(tmp_path / "s")
    with pytest.raises(ValueError):
        sd.write_json(name, {})
    with pytest.raises(ValueError):
        sd.read_json(name)


def test_ledger_entries_from_the_future_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = 1_700_000_000.0
    entries = [
        {"request_id": "ok", "state": "open", "opened_at": now - 10, "finished_at": None},
        {"request_id": "skew", "state": "open", "opened_at": now + 60, "finished_at": None},
        {"request_id": "month", "state": "open", "opened_at": now + 30 * 86400},
        {"request_id": "nan", "state": "failed", "opened_at": now, "finished_at": math.nan},
    ]
    sd = StateDir(tmp_path)
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"entries": entries}))
    with caplog.at_level(logging.WARNING):
        loaded = load_entries(sd, now=now)
    assert [e.request_id for e in loaded] == ["ok", "skew"]
    assert "skipped 2 malformed entries" in caplog.text


def test_state_is_written_as_strict_json(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    with pytest.raises(StateError, match="serialise"):
        sd.write_json("x.json", {"a": math.inf})
    with pytest.raises(StateError, match="serialise"):
        sd.append_audit({"ts": math.nan})
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "audit.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp file left behind
