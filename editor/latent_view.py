"""The latent canvas: the latent vector as a grid of tiles, painted directly.

Red is positive, blue negative, white zero; colours saturate at |z| >= 2 (the latents of
encoded faces spread about one unit). Dragging with the left button writes the
magnitude slider's value into the tiles under a square brush; the right button writes
its negative. ``latent_painted`` carries the whole new vector.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

SATURATION = 3.0

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)


def latent_colors(grid: np.ndarray, saturation: float = SATURATION) -> np.ndarray:
    """(rows, cols) latents -> uint8 (rows, cols, 3): blue (-) / white (0) / red (+)."""
    t = np.clip(grid / saturation, -1, 1)
    rgb = np.ones(grid.shape + (3,), dtype=np.float32)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    rgb[..., 1] -= pos + neg
    rgb[..., 2] -= pos
    rgb[..., 0] -= neg
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


class _TileItem(pg.ImageItem):
    """An ImageItem that reports drags in tile coordinates."""

    def __init__(self, owner: LatentView) -> None:
        super().__init__()
        self.owner = owner

    def _paint(self, ev: object, finished: bool) -> None:
        if ev.button() not in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):  # type: ignore[attr-defined]
            ev.ignore()  # type: ignore[attr-defined]
            return
        ev.accept()  # type: ignore[attr-defined]
        sign = -1.0 if ev.button() == Qt.MouseButton.RightButton else 1.0  # type: ignore[attr-defined]
        p = ev.pos()  # type: ignore[attr-defined]
        self.owner.paint_at(int(p.y()), int(p.x()), sign, finished=finished)

    def mouseDragEvent(self, ev: pg.GraphicsScene.mouseEvents.MouseDragEvent) -> None:  # noqa: N802
        self._paint(ev, ev.isFinish())

    def mouseClickEvent(self, ev: pg.GraphicsScene.mouseEvents.MouseClickEvent) -> None:  # noqa: N802
        self._paint(ev, True)


class LatentView(QWidget):
    latent_painted = Signal(object, bool)  # np.ndarray (D,), finished

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = np.zeros((1, 1), dtype=np.float32)
        self.plot = pg.GraphicsLayoutWidget()
        self.plot.setBackground((38, 38, 42))
        self.view = self.plot.addViewBox(lockAspect=True, enableMouse=False, invertY=True)
        self.view.setMenuEnabled(False)
        self.image = _TileItem(self)
        self.view.addItem(self.image)
        self.setMinimumSize(180, 200)

        self.magnitude = QSlider(Qt.Orientation.Horizontal)
        self.magnitude.setRange(-30, 30)
        self.magnitude.setValue(15)
        self.magnitude.setToolTip("The value painted into the tiles (right button: its negative)")
        self.magnitude_label = QLabel()
        self.brush = QSlider(Qt.Orientation.Horizontal)
        self.brush.setRange(1, 4)
        self.brush.setValue(1)
        self.brush.setToolTip("Square brush size, in tiles")
        self.magnitude.valueChanged.connect(self._update_label)
        self._update_label()

        row = QHBoxLayout()
        row.addWidget(QLabel("value"))
        row.addWidget(self.magnitude, 1)
        row.addWidget(self.magnitude_label)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("size"))
        row2.addWidget(self.brush, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot, 1)
        layout.addLayout(row)
        layout.addLayout(row2)

    def _update_label(self) -> None:
        self.magnitude_label.setText(f"{self.magnitude.value() / 10:+.1f}")

    def set_latent(self, grid: np.ndarray) -> None:
        """Show a (rows, cols) latent (does not emit)."""
        self.grid = np.asarray(grid, dtype=np.float32).copy()
        self.image.setImage(latent_colors(self.grid), autoLevels=False, levels=(0, 255))
        self.view.setRange(xRange=(0, self.grid.shape[1]), yRange=(0, self.grid.shape[0]), padding=0.02)

    def paint_at(self, row: int, col: int, sign: float = 1.0, finished: bool = False) -> None:
        """Write the magnitude into a square of tiles around (row, col) and emit the new latent."""
        rows, cols = self.grid.shape
        size = self.brush.value()
        r0, c0 = row - (size - 1) // 2, col - (size - 1) // 2
        r1, c1 = min(rows, r0 + size), min(cols, c0 + size)
        r0, c0 = max(0, r0), max(0, c0)
        if r0 < r1 and c0 < c1:
            self.grid[r0:r1, c0:c1] = sign * self.magnitude.value() / 10
            self.image.setImage(latent_colors(self.grid), autoLevels=False, levels=(0, 255))
        self.latent_painted.emit(self.grid.ravel().copy(), finished)
