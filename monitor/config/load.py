"""Reading a config file: YAML (with duplicate-key detection), `${NAME}` and
`${NAME:-default}` expansion, token files, then validation into a frozen `Config`.

Every problem in a file is reported at once, as one `ConfigError` whose `problems`
are `(dotted.path, reason)` pairs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from monitor.config import sources
from monitor.config.errors import Loc, dotted, translate
from monitor.config.schema import Config
from monitor.errors import ConfigError

_SECRET_SECTIONS = ("discord", "control")
# A config is a few hundred nodes (a long protected-id list a few thousand). Aliases can
# make a tiny file expand to billions (the "billion laughs"): refuse past this many nodes
# with aliases expanded, counted without expanding them.
MAX_EXPANDED_NODES = 100_000
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """`$CDP_MONITOR_CONFIG`, else `./monitor.yaml`."""
    env = os.environ if environ is None else environ
    return Path(env.get("CDP_MONITOR_CONFIG") or "monitor.yaml")


class LoadedConfig(NamedTuple):
    """A config and where each key's value came from (dotted key → source)."""

    config: Config
    sources: dict[str, str]


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file. Raises ConfigError listing every problem."""
    return load_config_sources(path, environ=environ).config


def load_config_sources(
    path: str | Path, *, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """:func:`load_config`, with where each value came from (for `check-config`)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([("", f"config file not found: {path}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("", f"config file is not UTF-8 text: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {path}: {exc.strerror}")]) from None
    return _parse(text, source=path, environ=environ)


def parse_config(
    text: str, *, source: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config text. `source` anchors relative paths (else the working directory)."""
    return _parse(text, source=source, environ=environ).config


def _parse(
    text: str, *, source: Path | None = None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    env: Mapping[str, str] = os.environ if environ is None else environ
    base_dir = source.absolute().parent if source is not None else Path.cwd()
    problems: list[tuple[str, str]] = []

    data, duplicates = _load_yaml(text)
    problems += duplicates
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [("", "top level must be a mapping of sections (discord:, gate:, reconcile:, ...)")]
        )

    expanded = _expand_tree(data, (), env, problems)
    assert isinstance(expanded, dict)
    origin = _apply_sources(expanded, env, base_dir, problems)
    # Present so a missing section reports discord.token, not just `discord`.
    if expanded.get("discord") is None:
        expanded["discord"] = {}
    if "state_dir" not in expanded and env.get("STATE_DIRECTORY"):
        # systemd's StateDirectory=; it may list several, the first is ours.
        expanded["state_dir"] = env["STATE_DIRECTORY"].split(":")[0]
    covered: set[str] = set()  # tokens whose token_file failed: no follow-on "required"
    for section in _SECRET_SECTIONS:
        if not _read_token_file(expanded, section, base_dir, env, problems):
            covered.add(f"{section}.token")

    covered |= {path for path, _ in problems}
    try:
        config = Config.model_validate(expanded, context={"base_dir": base_dir})
    except ValidationError as exc:
        for path, reason in translate(exc):
            if not _covered(path, covered):
                problems.append((path, reason))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(config, _provenance(origin))


def _apply_sources(
    data: dict[str, Any], env: Mapping[str, str], base_dir: Path, problems: list[tuple[str, str]]
) -> dict[tuple[str, ...], str]:
    """Merge CDP's names (under the file) and `CDP_MONITOR_*` (over it) into `data`;
    return where each set key came from."""
    # A key the file sets, even to null (`proxy: null`: no proxy), is the file's.
    origin = {
        path: sources.FILE for path in sources.leaf_paths(Config) if sources.in_data(data, path)
    }
    overlay = sources.env_overlay(Config, env)
    env_file_name = overlay.get(("cdp", "env_file")) or sources.get_path(data, ("cdp", "env_file"))
    file_values: dict[str, str] = {}
    if isinstance(env_file_name, str) and env_file_name:
        env_path = Path(env_file_name)
        env_path = env_path if env_path.is_absolute() else base_dir / env_path
        env_file_name = str(env_path)
        try:
            file_values = sources.read_env_file(env_path)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(("cdp.env_file", f"cannot read {env_path}: {exc}"))
    for path, (value, where) in sources.cdp_values(env, file_values, str(env_file_name)).items():
        if path in origin or (path[-1] == "token" and _has_token_file(data, path)):
            continue
        sources.set_path(data, path, value)
        origin[path] = where
    for path, value in overlay.items():
        sources.set_path(data, path, value)
        origin[path] = f"environment {sources.ENV_PREFIX}{'_'.join(path).upper()}"
        if path[-1] == "token":  # the variable replaces the file's token_file too
            block = sources.get_path(data, path[:-1])
            if isinstance(block, dict):
                block.pop("token_file", None)
    return origin


def _has_token_file(data: dict[str, Any], token: tuple[str, ...]) -> bool:
    return sources.has_path(data, (*token[:-1], "token_file"))


def _provenance(origin: dict[tuple[str, ...], str]) -> dict[str, str]:
    return {
        ".".join(path): origin.get(path, sources.DEFAULT) for path in sources.leaf_paths(Config)
    }


def _covered(path: str, covered: set[str]) -> bool:
    # An unset ${VAR} or unreadable token_file already explains the follow-on schema error.
    return any(path == c or path.startswith(c + ".") for c in covered if c)


def _load_yaml(text: str) -> tuple[Any, list[tuple[str, str]]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        if _expanded_size(node, {}, set()) > MAX_EXPANDED_NODES:
            raise ConfigError(
                [("", f"not valid YAML: aliases expand it past {MAX_EXPANDED_NODES} nodes")]
            )
        duplicates = list(_find_duplicates(node, (), set()))
        return loader.construct_document(node), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        raise ConfigError([("", f"not valid YAML: {what}{where}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], busy: set[int]) -> int:
    """How many nodes the document has with every alias expanded (memoised per node, so
    linear in the composed graph); a recursive alias counts as too many."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in busy:
        return MAX_EXPANDED_NODES + 1
    busy.add(id(node))
    total = 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            total += _expanded_size(key_node, sizes, busy) + _expanded_size(value_node, sizes, busy)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, sizes, busy)
    busy.discard(id(node))
    sizes[id(node)] = total = min(total, MAX_EXPANDED_NODES + 1)
    return total


def _find_duplicates(node: yaml.Node, loc: Loc, seen_nodes: set[int]) -> Iterator[tuple[str, str]]:
    # PyYAML silently keeps the last of two equal keys; a config typo hides that way.
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                yield dotted((*loc, key)), f"duplicate key (lines {first_line[key]} and {line})"
            else:
                first_line[key] = line
            yield from _find_duplicates(value_node, (*loc, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _find_duplicates(item, (*loc, index), seen_nodes)


def _expand_tree(
    value: Any, loc: Loc, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    if isinstance(value, dict):
        return {k: _expand_tree(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        try:
            return _expand(value, env)
        except ValueError as exc:
            problems.append((dotted(loc), str(exc)))
            return ""
    return value


def _expand(text: str, env: Mapping[str, str]) -> str:
    """`${NAME}`, `${NAME:-default}` (default when unset or empty); `$${` is a literal `${`."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None or (default is not None and "${" in default):
            raise ValueError("bad ${...} reference (write ${NAME} or ${NAME:-default})")
        found = env.get(name)
        if default is not None:
            return found or default
        if found is None:
            raise ValueError(f"environment variable {name} is not set")
        return found

    return _ENV_REF.sub(replace, text)


def _read_token_file(
    data: dict[Any, Any],
    section: str,
    base_dir: Path,
    env: Mapping[str, str],
    problems: list[tuple[str, str]],
) -> bool:
    """Put the content of `<section>.token_file` in `<section>.token`. False if it failed."""
    block = data.get(section)
    if not isinstance(block, dict) or block.get("token_file") in (None, ""):
        return True
    name = block["token_file"]
    where = f"{section}.token_file"
    if not isinstance(name, str):
        return True  # the schema reports the wrong type
    if block.get("token") not in (None, ""):
        problems.append((where, f"set either {section}.token or {section}.token_file, not both"))
        return True
    path = Path(name)
    if not path.is_absolute():
        # systemd LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY.
        creds = env.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / path).is_file():
            path = Path(creds) / path
        else:
            path = base_dir / path
    block = dict(block)
    data[section] = block
    block["token_file"] = str(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        problems.append((where, f"file not found: {path}"))
        return False
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problems.append((where, f"cannot read {path}: {reason}"))
        return False
    if not token:
        problems.append((where, f"file is empty: {path}"))
        return False
    block["token"] = token
    return True
