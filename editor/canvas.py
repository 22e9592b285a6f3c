"""The photo canvas: shows the (edited) photo, takes brush strokes, shows faces.

Mouse positions are turned into photo pixels here; the worker never sees widget
coordinates. Tools:
    brush       left drag paints (stroke_started / stroke_moved / stroke_finished)
    eyedropper  a click picks the colour under the cursor (color_picked)
    face box    drag a box around a face that was not found (face_box_drawn)
Clicking a face outline (when several were found) selects it (face_clicked).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen, QPolygonF, QResizeEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from engine.core.requests import FaceInfo


def qimage_from_array(a: np.ndarray) -> QImage:
    """uint8 (h, w, 3) RGB -> an owning QImage."""
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class PhotoCanvas(QWidget):
    stroke_started = Signal(float, float)  # photo pixels
    stroke_moved = Signal(float, float)
    stroke_finished = Signal()
    color_picked = Signal(int, int, int)
    face_clicked = Signal(int)
    face_box_drawn = Signal(float, float, float, float)
    resized = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 240)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self._image: QImage | None = None
        self._array: np.ndarray | None = None
        self._scale = 1.0  # displayed image pixels per photo pixel
        self.faces: tuple[FaceInfo, ...] = ()
        self.face_index = 0
        self.show_faces = False
        self.tool = "brush"
        self.brush_radius = 12.0  # screen pixels
        self.brush_color = QColor(40, 30, 20)
        self.placeholder = "Open a photo (Ctrl+O) or drop one here"
        self._cursor: QPointF | None = None
        self._dragging = False
        self._box_start: QPointF | None = None
        self._box_end: QPointF | None = None

    # ---- content --------------------------------------------------------------------
    def set_frame(self, image: np.ndarray, scale: float) -> None:
        """Show ``image`` (the photo resized by ``scale``)."""
        self._array = image
        self._image = qimage_from_array(image)
        self._scale = scale
        self.update()

    def clear(self, text: str | None = None) -> None:
        self._image, self._array = None, None
        if text:
            self.placeholder = text
        self.update()

    def has_image(self) -> bool:
        return self._image is not None

    def image_array(self) -> np.ndarray | None:
        return self._array

    # ---- geometry ---------------------------------------------------------------------
    def _image_rect(self) -> QRectF:
        """Where the image sits in the widget: centred, as large as fits."""
        if self._image is None:
            return QRectF()
        iw, ih = self._image.width(), self._image.height()
        f = min(self.width() / iw, self.height() / ih) if iw and ih else 1.0
        w, h = iw * f, ih * f
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def _view_factor(self) -> float:
        """Widget pixels per photo pixel."""
        r = self._image_rect()
        return (r.width() / self._image.width()) * self._scale if self._image is not None else 1.0

    def to_photo(self, p: QPointF) -> tuple[float, float]:
        r = self._image_rect()
        f = self._view_factor()
        return ((p.x() - r.x()) / f - 0.5, (p.y() - r.y()) / f - 0.5)

    def to_widget(self, x: float, y: float) -> QPointF:
        r = self._image_rect()
        f = self._view_factor()
        return QPointF(r.x() + (x + 0.5) * f, r.y() + (y + 0.5) * f)

    def brush_radius_photo(self) -> float:
        """The brush radius in photo pixels (the brush size is set in screen pixels)."""
        return self.brush_radius / max(self._view_factor(), 1e-6)

    # ---- events -------------------------------------------------------------------------
    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.resized.emit(self.width(), self.height())

    def _face_at(self, p: QPointF) -> int | None:
        for i, f in enumerate(self.faces):
            poly = QPolygonF([self.to_widget(x, y) for x, y in f.box])
            if poly.containsPoint(p, Qt.FillRule.OddEvenFill):
                return i
        return None

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() != Qt.MouseButton.LeftButton or self._image is None:
            return
        p = event.position()
        if self.tool == "facebox":
            self._box_start = self._box_end = p
        elif self.tool == "eyedropper":
            self._pick(p)
        elif self.show_faces and len(self.faces) > 1 and (i := self._face_at(p)) is not None and i != self.face_index:
            self.face_clicked.emit(i)
        else:
            self._dragging = True
            self.stroke_started.emit(*self.to_photo(p))
        self.update()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        p = event.position()
        self._cursor = p
        if self._dragging:
            self.stroke_moved.emit(*self.to_photo(p))
        elif self._box_start is not None:
            self._box_end = p
        self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() != Qt.MouseButton.LeftButton:
            return
        if self._dragging:
            self._dragging = False
            self.stroke_finished.emit()
        elif self._box_start is not None and self._box_end is not None:
            x0, y0 = self.to_photo(self._box_start)
            x1, y1 = self.to_photo(self._box_end)
            self._box_start = self._box_end = None
            self.face_box_drawn.emit(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.update()

    def leaveEvent(self, event: object) -> None:  # noqa: N802
        self._cursor = None
        self.update()

    def _pick(self, p: QPointF) -> None:
        if self._array is None:
            return
        r = self._image_rect()
        f = r.width() / self._array.shape[1]
        col = int((p.x() - r.x()) / f)
        row = int((p.y() - r.y()) / f)
        if 0 <= row < self._array.shape[0] and 0 <= col < self._array.shape[1]:
            self.color_picked.emit(*(int(v) for v in self._array[row, col]))

    @property
    def dragging(self) -> bool:
        return self._dragging

    # ---- painting -------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 38, 42))
        if self._image is None:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(self._image_rect(), self._image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if self.show_faces:
            for i, f in enumerate(self.faces):
                chosen = i == self.face_index
                pen = QPen(QColor(80, 220, 120) if chosen else QColor(255, 210, 60), 2 if chosen else 1.5)
                if f.manual:
                    pen.setStyle(Qt.PenStyle.DashLine)
                painter.setPen(pen)
                painter.drawPolygon(QPolygonF([self.to_widget(x, y) for x, y in f.box]))
        if self._box_start is not None and self._box_end is not None:
            painter.setPen(QPen(QColor(80, 200, 255), 2, Qt.PenStyle.DashLine))
            painter.drawRect(QRectF(self._box_start, self._box_end).normalized())
        if self._cursor is not None and self.tool == "brush":
            painter.setPen(QPen(QColor(0, 0, 0, 160), 3))
            painter.drawEllipse(self._cursor, self.brush_radius, self.brush_radius)
            painter.setPen(QPen(self.brush_color.lighter(130) if self.brush_color.lightness() < 60
                                else self.brush_color, 1.5))
            painter.drawEllipse(self._cursor, self.brush_radius, self.brush_radius)
