"""`cdp-monitor config example|deploy`: the documented example config and the deploy
files, shipped in the package (monitor/_files links to monitor.yaml and deploy/), so
they work from a wheel or `pipx install` as from a checkout."""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from monitor.cli_daemon import EXIT_OK, UsageError
from monitor.errors import MonitorError

_FILES = files("monitor") / "_files"


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "example":
        sys.stdout.write((_FILES / "monitor.yaml").read_text(encoding="utf-8"))
        return EXIT_OK
    for path in _copy_tree(_FILES / "deploy", args.directory, force=args.force):
        print(path)
    return EXIT_OK


def _copy_tree(source: Traversable, target: Path, *, force: bool) -> list[Path]:
    """Copy the packaged tree `source` to `target`; refuses to overwrite unless `force`."""
    pairs: list[tuple[Traversable, Path]] = []

    def walk(node: Traversable, dest: Path) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                walk(child, dest / child.name)
            elif child.name != ".gitignore":
                pairs.append((child, dest / child.name))

    walk(source, target)
    existing = [dest for _, dest in pairs if dest.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists (--force overwrites)")
    for child, dest in pairs:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(child.read_bytes())
        except OSError as exc:
            raise MonitorError(f"cannot write {dest}: {exc.strerror}") from None
    return [dest for _, dest in pairs]
