"""Autosave files and crash recovery. Qt-free.

Each running editor autosaves to ``<config>/autosave/session-<pid>.npe``. A clean exit
deletes its file; a file whose process is gone was left by a crash, and the next start
offers to restore it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from editor.settings import config_dir

PATTERN = re.compile(r"^session-(\d+)\.npe$")


def autosave_dir() -> Path:
    return config_dir() / "autosave"


def autosave_path(pid: int | None = None) -> Path:
    return autosave_dir() / f"session-{os.getpid() if pid is None else pid}.npe"


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def find_orphans() -> list[Path]:
    """Autosave files of editors that are no longer running, newest first."""
    d = autosave_dir()
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = PATTERN.match(p.name)
        if m and not process_alive(int(m.group(1))):
            found.append(p)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def adopt(orphan: Path) -> Path:
    """Make a crashed editor's autosave this process's own; returns its new path."""
    mine = autosave_path()
    mine.parent.mkdir(parents=True, exist_ok=True)
    os.replace(orphan, mine)
    return mine


def discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
