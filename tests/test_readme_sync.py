"""README.md and README.zh-CN.md stay in sync: the same sections in the same order (each
Chinese heading is followed by `<!-- en: English heading -->`), the same commands, flags,
config keys and environment variables. A change to one without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EN = REPO_ROOT / "README.md"
ZH = REPO_ROOT / "README.zh-CN.md"

_SECTIONS = "discord|cdp|probes|signals|health|breaker|gate|reconcile|control|actions|log"
_FACTS = {
    "command": re.compile(
        r"\b(cdp-monitor(?: [a-z][a-z-]*){1,2}"
        r"|make (?:demo|test|lint|tools|sim|bench|constraints|clean))\b"
    ),
    "flag": re.compile(r"(?<![\w-])(--[a-z][a-z-]+)"),
    "config key": re.compile(rf"`((?:{_SECTIONS})\.[a-z_]+(?:\.[a-z_]+)*|state_dir)\b"),
    "environment variable": re.compile(r"\b((?:CDP_MONITOR|BOT|GUILD|PORT)[A-Z_]*)\b"),
}
_NOT_KEYS = {"py", "json", "yml", "yaml", "md", "internal"}
_SUBCOMMANDS = "run check-config config status pause resume reconcile probe sim demo --help".split()


def headings(text: str) -> list[tuple[int, str, int]]:
    """(level, heading text, line index) outside code fences."""
    out = []
    fenced = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+)", line)):
            out.append((len(m.group(1)), m.group(2).strip(), i))
    return out


def facts(text: str, kind: str) -> set[str]:
    found = set(_FACTS[kind].findall(text))
    if kind == "config key":  # not file names such as `control.py`
        found = {k for k in found if k.rsplit(".", 1)[-1] not in _NOT_KEYS}
    if kind == "command":  # `cdp-monitor` followed by a subcommand (and its action)
        found = {c for c in found if c.startswith("make ") or c.split()[1] in _SUBCOMMANDS}
        found = {c if c.split()[1] == "config" else " ".join(c.split()[:2]) for c in found}
    return found


def test_the_same_sections_in_the_same_order() -> None:
    en = [(level, title) for level, title, _ in headings(EN.read_text())]
    zh_text = ZH.read_text().splitlines()
    zh = []
    for level, _title, i in headings(ZH.read_text()):
        following = next((line for line in zh_text[i + 1 :] if line.strip()), "")
        m = re.fullmatch(r"<!-- en: (.+) -->", following.strip())
        assert m, f"README.zh-CN.md line {i + 1}: heading without `<!-- en: ... -->`"
        zh.append((level, m.group(1)))
    missing_in_zh = [h for h in en if h not in zh]
    missing_in_en = [h for h in zh if h not in en]
    assert not missing_in_zh, f"sections missing from README.zh-CN.md: {missing_in_zh}"
    assert not missing_in_en, f"sections missing from README.md: {missing_in_en}"
    assert zh == en, "the sections are in a different order"


@pytest.mark.parametrize("kind", sorted(_FACTS))
def test_the_same_commands_flags_keys_and_variables(kind: str) -> None:
    en, zh = facts(EN.read_text(), kind), facts(ZH.read_text(), kind)
    assert en, f"no {kind} found in README.md: the pattern is wrong"
    assert not en - zh, f"{kind}s in README.md but not README.zh-CN.md: {sorted(en - zh)}"
    assert not zh - en, f"{kind}s in README.zh-CN.md but not README.md: {sorted(zh - en)}"


def test_the_chinese_readme_is_chinese() -> None:
    prose = re.sub(r"```.*?```", "", ZH.read_text(), flags=re.S)
    han = len(re.findall(r"[\u4e00-\u9fff]", prose))
    assert han > 5000, f"only {han} Chinese characters outside code blocks"
