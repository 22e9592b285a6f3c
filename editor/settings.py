"""Editor settings: brush colour and size, recent colours and files. Qt-free.

Stored as JSON in the user's config folder (``$NPE_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/neural-photo-editor``, else ``~/.config/neural-photo-editor``).
Widgets bind to a ``Settings`` object; listeners are told after every change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.core.images import ImageError, atomic_write

MAX_RECENT_FILES = 10
MAX_RECENT_COLORS = 12
MIN_BRUSH, MAX_BRUSH = 2, 150
MIN_STRENGTH, MAX_STRENGTH = 20, 400
DEFAULT_SWATCHES = ["#1e1611", "#4a2f1d", "#8a5a2b", "#d9b36c", "#e8c7a8", "#b5705a", "#f2f2f2", "#7a7a7a"]


def config_dir() -> Path:
    if os.environ.get("NPE_CONFIG_DIR"):
        return Path(os.environ["NPE_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "neural-photo-editor"


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def parse_hex(text: str) -> tuple[int, int, int]:
    t = text.lstrip("#")
    if len(t) != 6:
        raise ValueError(f"not a colour: {text!r}")
    return int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16)


@dataclass
class Settings:
    brush_color: str = "#1e1611"
    brush_size: int = 14  # screen pixels (radius)
    brush_strength: int = 100  # percent of the default latent step
    recent_colors: list[str] = field(default_factory=lambda: list(DEFAULT_SWATCHES))
    recent_files: list[str] = field(default_factory=list)
    export_quality: int = 95
    autosave_seconds: int = 30

    def __post_init__(self) -> None:
        self._listeners: list[Callable[[Settings], None]] = []

    # ---- binding ------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Settings], None]) -> None:
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in list(self._listeners):
            fn(self)

    # ---- changes --------------------------------------------------------------------
    def set_color(self, rgb: tuple[int, int, int]) -> None:
        c = hex_color(rgb)
        if c != self.brush_color:
            self.brush_color = c
            self._changed()

    def remember_color(self, rgb: tuple[int, int, int]) -> None:
        """Put a colour first in the recent list (after a stroke uses it)."""
        c = hex_color(rgb)
        lst = [c] + [x for x in self.recent_colors if x != c]
        if lst[:MAX_RECENT_COLORS] != self.recent_colors:
            self.recent_colors = lst[:MAX_RECENT_COLORS]
            self._changed()

    def set_brush_size(self, size: int) -> None:
        s = max(MIN_BRUSH, min(MAX_BRUSH, int(size)))
        if s != self.brush_size:
            self.brush_size = s
            self._changed()

    def set_brush_strength(self, percent: int) -> None:
        p = max(MIN_STRENGTH, min(MAX_STRENGTH, int(percent)))
        if p != self.brush_strength:
            self.brush_strength = p
            self._changed()

    def grow_brush(self, factor: float) -> None:
        step = max(1, round(self.brush_size * abs(factor - 1)))
        self.set_brush_size(self.brush_size + (step if factor > 1 else -step))

    def add_recent_file(self, path: str) -> None:
        p = str(Path(path).resolve())
        self.recent_files = ([p] + [x for x in self.recent_files if x != p])[:MAX_RECENT_FILES]
        self._changed()

    @property
    def color_rgb(self) -> tuple[int, int, int]:
        return parse_hex(self.brush_color)

    # ---- files ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def save(self, path: Path | None = None) -> None:
        p = path or config_dir() / "settings.json"
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(p, json.dumps(self.to_dict(), indent=2).encode())
        except (OSError, ImageError):
            pass  # settings are a convenience; never fail the program over them

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        p = path or config_dir() / "settings.json"
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            s = cls(**known)
            parse_hex(s.brush_color)
            s.brush_size = max(MIN_BRUSH, min(MAX_BRUSH, int(s.brush_size)))
            s.brush_strength = max(MIN_STRENGTH, min(MAX_STRENGTH, int(s.brush_strength)))
            return s
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()
