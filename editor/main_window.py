"""The editor window: canvas in the middle, latent canvas and sliders in docks.

Where a brush stroke goes: ``PhotoCanvas.stroke_*`` signals -> ``MainWindow._stroke_*``
-> ``EngineWorker.send(StrokeBegin / StrokeMove / StrokeEnd)`` -> (worker thread)
``EditService.handle`` -> ``EditSession.brush_to`` -> ``EditService.frame`` -> ``Frame`` ->
``Bridge.answer`` (queued signal) -> ``MainWindow._on_answer`` -> ``PhotoCanvas.set_frame``.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QKeyEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QColorDialog,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSlider,
    QToolBar,
    QToolButton,
    QWidget,
)

from editor import recovery
from editor.canvas import PhotoCanvas
from editor.latent_view import LatentView
from editor.settings import MAX_BRUSH, MAX_STRENGTH, MIN_BRUSH, MIN_STRENGTH, Settings, parse_hex
from editor.sliders import AttributePanel
from editor.worker import EngineFactory, EngineWorker
from engine.core import requests as rq
from engine.core.images import READABLE_SUFFIXES

OPEN_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif);;Sessions (*.npe);;All files (*)"
EXPORT_FILTER = "PNG image (*.png);;JPEG image (*.jpg *.jpeg)"
Shortcut = str | QKeySequence | QKeySequence.StandardKey  # what QKeySequence() takes
COMPARE_KEY = Qt.Key.Key_Backslash


class Bridge(QObject):
    """Carries the worker's answers to the GUI thread (a queued connection)."""

    answer = Signal(object)


GC_INTERVAL_MS = 2000


def collect_garbage_on_the_gui_thread() -> None:
    """Python's cycle collector runs on whichever thread allocates when it triggers; if that is
    the engine worker and the garbage holds Qt widgets, Qt aborts the process. So automatic
    collection is turned off and the GUI thread collects on a timer instead (once per app).
    What exists at start-up is frozen out of collection, so each pass is cheap (0.2 ms measured
    with the shipped model loaded, against 170 ms for a full pass without the freeze)."""
    app = QApplication.instance()
    if app is None or app.property("npe_gc_timer"):
        return
    gc.disable()
    gc.collect()
    gc.freeze()
    timer = QTimer(app)
    timer.timeout.connect(gc.collect)
    timer.start(GC_INTERVAL_MS)
    app.setProperty("npe_gc_timer", True)


def _toolbar_slider(tb: QToolBar, title: str, bounds: tuple[int, int], width: int, tip: str,
                    on_change: Callable[[int], None]) -> tuple[QSlider, QLabel]:
    """A titled horizontal slider with a value label after it, added to ``tb``."""
    tb.addWidget(QLabel(f" {title} "))
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(*bounds)
    slider.setFixedWidth(width)
    slider.setToolTip(tip)
    slider.valueChanged.connect(on_change)
    tb.addWidget(slider)
    label = QLabel()
    tb.addWidget(label)
    return slider, label


def _show_value(slider: QSlider, label: QLabel, value: int, text: str) -> None:
    """Mirror a setting on its slider without emitting, and on its label."""
    slider.blockSignals(True)
    slider.setValue(value)
    slider.blockSignals(False)
    label.setText(text)


class MainWindow(QMainWindow):
    frame_shown = Signal(object)  # the Frame just shown (for tests and figures)
    message = Signal(str)

    def __init__(self, engine_factory: EngineFactory, settings: Settings | None = None,
                 ask: bool = True, autosave: Path | None | bool = True) -> None:
        super().__init__()
        collect_garbage_on_the_gui_thread()
        self.setWindowTitle("Neural Photo Editor")
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.settings = settings or Settings.load()
        self.ask = ask  # False in tests: never block on a question dialog
        self._ids = itertools.count(1)
        self.generation = 0
        self.last_frame: rq.Frame | None = None
        self.info: dict[str, object] = {}
        self.document_path: str | None = None
        self.export_path: str | None = None
        self.exported_state = True
        self.opened: rq.Opened | None = None
        self.view_mode = "edit"
        self.comparing = False
        self.ready = False
        self.errors: list[str] = []

        self.canvas = PhotoCanvas()
        self.setCentralWidget(self.canvas)
        self.latent = LatentView()
        self.attributes = AttributePanel()
        latent_dock = self._dock("Latent canvas", self.latent, Qt.DockWidgetArea.RightDockWidgetArea)
        attr_dock = self._dock("Attributes", self.attributes, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([latent_dock, attr_dock], [330, 330], Qt.Orientation.Horizontal)
        self.resizeDocks([latent_dock, attr_dock], [330, 470], Qt.Orientation.Vertical)
        self.status_engine = QLabel("starting the model...")
        self.status_timing = QLabel("")
        self.status_timing.setToolTip(
            "Engine time of the last update, from taking the request to the new picture.\n"
            "brush step: one latent update while you paint (the live figure);\n"
            "finishing the stroke: a few refining steps and the undo step, once, on release.")
        self._stroke_ms: list[float] = []  # brush step times of the stroke being painted
        self.statusBar().addPermanentWidget(self.status_timing)
        self.statusBar().addPermanentWidget(self.status_engine)
        self._build_actions()
        self._build_toolbar()
        self._connect()
        self._apply_settings(self.settings)
        self.settings.subscribe(self._apply_settings)

        self.bridge = Bridge()
        self.bridge.answer.connect(self._on_answer, Qt.ConnectionType.QueuedConnection)
        self.autosave_path = recovery.autosave_path() if autosave is True else (autosave or None)
        self.worker = EngineWorker(engine_factory, self.bridge.answer.emit, autosave_path=self.autosave_path,
                                   autosave_seconds=float(self.settings.autosave_seconds))
        self.worker.start()
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(60)
        self._resize_timer.timeout.connect(self._send_view)

    # ---- construction -------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, text: str, slot: Callable[..., object], shortcut: Shortcut | list[Shortcut] | None = None,
                checkable: bool = False, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            if isinstance(shortcut, list):
                a.setShortcuts([QKeySequence(s) for s in shortcut])
            else:
                a.setShortcut(QKeySequence(shortcut))
        a.setCheckable(checkable)
        if tip:
            a.setStatusTip(tip)
            a.setToolTip(f"{text.replace('&', '')} ({a.shortcut().toString()})" if shortcut else tip)
        a.triggered.connect(slot)  # type: ignore[arg-type]
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        self.act_open = self._action("&Open...", self.open_dialog, QKeySequence.StandardKey.Open,
                                     tip="Open a photo or a saved session")
        self.act_export = self._action("&Export", self.export, QKeySequence.StandardKey.Save,
                                       tip="Export the edited photo at full resolution")
        self.act_export_as = self._action("Export &As...", self.export_as, "Ctrl+Shift+S",
                                          tip="Export the edited photo to a new file")
        self.act_save_session = self._action("Save &Session...", self.save_session_dialog, "Ctrl+Alt+S",
                                             tip="Save the photo and all edits to a .npe session file")
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_undo = self._action("&Undo", lambda: self._send(rq.Undo), QKeySequence.StandardKey.Undo,
                                     tip="Undo the last stroke or slider change")
        self.act_redo = self._action("&Redo", lambda: self._send(rq.Redo), ["Ctrl+Shift+Z", "Ctrl+Y"],
                                     tip="Redo")
        self.act_reset = self._action("Rese&t to photo", lambda: self._send(rq.Reset), "Ctrl+R",
                                      tip="Back to the photo as encoded (can be undone)")
        self.act_sample = self._action("&Sample a new face", lambda: self._send(rq.Sample), "Ctrl+Shift+N",
                                       tip="Replace the face by a random one from the model (can be undone)")
        self.act_brush = self._action("&Brush", lambda: self.set_tool("brush"), "B", checkable=True,
                                      tip="Paint colour on the face")
        self.act_dropper = self._action("&Eyedropper", lambda: self.set_tool("eyedropper"), "I", checkable=True,
                                        tip="Pick the brush colour from the image")
        self.act_facebox = self._action("&Place face box", lambda: self.set_tool("facebox"), "F", checkable=True,
                                        tip="Drag a box around a face that was not found")
        self.act_color = self._action("Brush &colour...", self.choose_color, "C", tip="Choose the brush colour")
        self.act_smaller = self._action("Smaller brush", lambda: self.settings.grow_brush(0.8), "[")
        self.act_bigger = self._action("Bigger brush", lambda: self.settings.grow_brush(1.25), "]")
        self.act_view_edit = self._action("Edited photo", lambda: self.set_view("edit"), "1", checkable=True)
        self.act_view_raw = self._action("Raw reconstruction", lambda: self.set_view("raw"), "2", checkable=True,
                                         tip="Show the decoder's output without the interpolation mask")
        self.act_view_mask = self._action("Interpolation mask", lambda: self.set_view("mask"), "3", checkable=True,
                                          tip="Show where the edit is blended in (red)")
        self.act_faces = self._action("Show &faces", self._toggle_faces, "Ctrl+F", checkable=True,
                                      tip="Outline the faces found; click one to edit it")
        self.act_shortcuts = self._action("&Keyboard shortcuts", self.show_shortcuts, "F1")

        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu("Open &Recent")
        m.addSeparator()
        m.addActions([self.act_export, self.act_export_as, self.act_save_session])
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        m.addActions([self.act_undo, self.act_redo])
        m.addSeparator()
        m.addActions([self.act_reset, self.act_sample])
        m = mb.addMenu("&Tools")
        m.addActions([self.act_brush, self.act_dropper, self.act_facebox, self.act_color,
                      self.act_smaller, self.act_bigger])
        m = mb.addMenu("&View")
        m.addActions([self.act_view_edit, self.act_view_raw, self.act_view_mask])
        m.addSeparator()
        m.addAction(self.act_faces)
        hold = QAction("Compare with the original (hold \\)", self)
        hold.setEnabled(False)
        m.addAction(hold)
        m = mb.addMenu("&Help")
        m.addAction(self.act_shortcuts)
        self.act_brush.setChecked(True)
        self.act_view_edit.setChecked(True)
        self._update_actions()

    def _build_toolbar(self) -> None:
        tb = QToolBar("Brush")
        tb.setObjectName("brush")
        self.addToolBar(tb)
        tb.addAction(self.act_open)
        tb.addAction(self.act_export)
        tb.addSeparator()
        tb.addActions([self.act_undo, self.act_redo])
        tb.addSeparator()
        tb.addActions([self.act_brush, self.act_dropper])
        self.color_button = QToolButton()
        self.color_button.setToolTip("Brush colour (C)")
        self.color_button.clicked.connect(self.choose_color)
        self.color_button.setFixedSize(30, 26)
        tb.addWidget(self.color_button)
        self.swatches: list[QToolButton] = []
        for _ in range(8):
            b = QToolButton()
            b.setFixedSize(20, 20)
            b.clicked.connect(lambda _=False, btn=b: self._swatch_clicked(btn))
            tb.addWidget(b)
            self.swatches.append(b)
        tb.addSeparator()
        self.size_slider, self.size_label = _toolbar_slider(
            tb, "Size", (MIN_BRUSH, MAX_BRUSH), 140, "Brush size ([ and ])", self.settings.set_brush_size)
        self.strength_slider, self.strength_label = _toolbar_slider(
            tb, "Strength", (MIN_STRENGTH, MAX_STRENGTH), 100,
            "How far each brush movement pushes the face toward the paint", self.settings.set_brush_strength)
        tb.addSeparator()
        tb.addActions([self.act_view_edit, self.act_view_raw, self.act_view_mask])
        tb.addSeparator()
        tb.addActions([self.act_reset, self.act_sample])

    def _connect(self) -> None:
        c = self.canvas
        c.stroke_started.connect(self._stroke_started)
        c.stroke_moved.connect(self._stroke_moved)
        c.stroke_finished.connect(self._stroke_finished)
        c.color_picked.connect(self._color_picked)
        c.face_clicked.connect(lambda i: self._send(rq.ChooseFace, index=i))
        c.face_box_drawn.connect(self._face_box_drawn)
        c.resized.connect(lambda *_: self._resize_timer.start())
        self.latent.latent_painted.connect(self._latent_painted)
        self.attributes.changed.connect(lambda v: self._send(rq.SetSliders, values=v))
        self.attributes.committed.connect(lambda v: self._send(rq.SetSliders, values=v, commit=True))
        self.attributes.hold_changed.connect(lambda on: self._send(rq.SetHold, on=on))

    # ---- settings binding ------------------------------------------------------------------
    def _apply_settings(self, s: Settings) -> None:
        rgb = s.color_rgb
        self.canvas.brush_color = QColor(*rgb)
        self.canvas.brush_radius = float(s.brush_size)
        self.canvas.update()
        self.color_button.setStyleSheet(f"background-color: {s.brush_color}; border: 1px solid #888;")
        for b, col in zip(self.swatches, s.recent_colors + [""] * 8, strict=False):
            b.setVisible(bool(col))
            b.setProperty("color", col)
            b.setToolTip(col)
            b.setStyleSheet(f"background-color: {col}; border: 1px solid #666;" if col else "")
        _show_value(self.size_slider, self.size_label, s.brush_size, f"{s.brush_size:3d} px ")
        _show_value(self.strength_slider, self.strength_label, s.brush_strength, f"{s.brush_strength:3d}% ")
        self._rebuild_recent()

    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.settings.recent_files:
            a = self.recent_menu.addAction(Path(p).name)
            a.setToolTip(p)
            a.triggered.connect(lambda _=False, path=p: self.open_path(path))
        self.recent_menu.setEnabled(bool(self.settings.recent_files))

    def _swatch_clicked(self, button: QToolButton) -> None:
        col = button.property("color")
        if col:
            self.settings.set_color(parse_hex(col))

    def choose_color(self) -> None:
        col = QColorDialog.getColor(QColor(self.settings.brush_color), self, "Brush colour")
        if col.isValid():
            self.settings.set_color((col.red(), col.green(), col.blue()))

    def _color_picked(self, r: int, g: int, b: int) -> None:
        self.settings.set_color((r, g, b))
        self.set_tool("brush")

    def set_tool(self, tool: str) -> None:
        self.canvas.tool = tool
        self.act_brush.setChecked(tool == "brush")
        self.act_dropper.setChecked(tool == "eyedropper")
        self.act_facebox.setChecked(tool == "facebox")
        self.canvas.setCursor(Qt.CursorShape.CrossCursor if tool != "brush" else Qt.CursorShape.BlankCursor)
        if tool == "facebox":
            self.statusBar().showMessage("Drag a box around the face, from forehead to chin", 8000)

    def set_view(self, mode: str) -> None:
        self.view_mode = mode
        for a, m in ((self.act_view_edit, "edit"), (self.act_view_raw, "raw"), (self.act_view_mask, "mask")):
            a.setChecked(m == mode)
        self._send_view()

    def _toggle_faces(self) -> None:
        self.canvas.show_faces = self.act_faces.isChecked()
        self.canvas.update()

    # ---- requests ----------------------------------------------------------------------------
    def _send(self, cls: type[rq.Request], **fields: object) -> int:
        rid = next(self._ids)
        self.worker.send(cls(id=rid, generation=self.generation, **fields))  # type: ignore[arg-type]
        return rid

    def _send_view(self) -> None:
        mode = "original" if self.comparing else self.view_mode
        ratio = self.canvas.devicePixelRatioF()
        self._send(rq.View, width=int(self.canvas.width() * ratio), height=int(self.canvas.height() * ratio),
                   mode=mode)

    def _stroke_started(self, x: float, y: float) -> None:
        if not self._editable():
            return
        self._stroke_ms = []
        self._send(rq.StrokeBegin, color=self.settings.color_rgb, radius=self.canvas.brush_radius_photo(),
                   strength=self.settings.brush_strength / 100)
        self._send(rq.StrokeMove, points=((x, y),))

    def _stroke_moved(self, x: float, y: float) -> None:
        if self._editable():
            self._send(rq.StrokeMove, points=((x, y),))

    def _stroke_finished(self) -> None:
        if self._editable():
            self._send(rq.StrokeEnd)
            self.settings.remember_color(self.settings.color_rgb)

    def _latent_painted(self, values: Iterable[float], finished: bool) -> None:
        if self._editable():
            self._send(rq.SetLatent, values=tuple(float(v) for v in values), commit=finished)

    def _face_box_drawn(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.set_tool("brush")
        self._send(rq.PlaceFace, rect=(x0, y0, x1, y1))

    def _editable(self) -> bool:
        return self.ready and self.opened is not None

    # ---- files -----------------------------------------------------------------------------------
    def open_dialog(self) -> None:
        start = str(Path(self.document_path).parent) if self.document_path else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open a photo", start, OPEN_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str, face: int | None = None) -> None:
        if not self._confirm_discard():
            return
        self.generation += 1
        self.statusBar().showMessage(f"Opening {Path(path).name}...")
        if path.lower().endswith(".npe"):
            self._send(rq.OpenSession, path=path)
        else:
            self._send(rq.OpenPhoto, path=path, face=face)
        self._send_view()

    def export(self) -> None:
        if self.export_path:
            self._export_to(self.export_path)
        else:
            self.export_as()

    def export_as(self) -> None:
        if self.opened is None:
            return
        src = Path(self.opened.path)
        if src.suffix.lower() == ".npe":  # a session (or a restored autosave): name it after the photo
            src = Path.home() / self.opened.name
        suggestion = str(src.with_name(Path(src.name).stem + "-edited.png"))
        path, _ = QFileDialog.getSaveFileName(self, "Export the edited photo", suggestion, EXPORT_FILTER)
        if path:
            if not Path(path).suffix:
                path += ".png"
            self._export_to(path, confirmed=True)  # the save dialog asked about overwriting

    def _export_to(self, path: str, confirmed: bool = False) -> None:
        if self.opened is None:
            return
        target = Path(path)
        same_as_photo = target.exists() and target.resolve() == Path(self.opened.path).resolve()
        if same_as_photo or (target.exists() and not confirmed and path != self.export_path):
            what = "the photo you opened" if same_as_photo else "an existing file"
            if not self._question(f"{target.name} is {what}. Overwrite it?"):
                return
        self.export_path = path
        self._send(rq.Export, path=path, quality=self.settings.export_quality)

    def save_session_dialog(self) -> None:
        if self.opened is None:
            return
        src = Path(self.opened.path)
        path, _ = QFileDialog.getSaveFileName(self, "Save session", str(src.with_suffix(".npe")),
                                              "Sessions (*.npe)")
        if path:
            if not path.endswith(".npe"):
                path += ".npe"
            self._send(rq.SaveSession, path=path)

    def _question(self, text: str) -> bool:
        if not self.ask:
            return True
        return QMessageBox.question(self, "Neural Photo Editor", text) == QMessageBox.StandardButton.Yes

    def _confirm_discard(self) -> bool:
        if self.last_frame is None or not self.last_frame.edited or self.exported_state:
            return True
        return self._question("The current edits have not been exported. Discard them?")

    # ---- answers from the worker ------------------------------------------------------------------
    def _on_answer(self, a: object) -> None:
        if isinstance(a, rq.Frame):
            if a.generation < self.generation:
                return  # a frame of a document that has since been replaced
            self._show_frame(a)
        elif isinstance(a, rq.Opened):
            self._opened(a)
        elif isinstance(a, rq.Ready):
            self.ready = True
            self.info = a.info
            self.attributes.set_sliders(a.sliders)
            dev = str(a.info.get("device", "cpu"))
            res = a.info.get("resolution")
            self.status_engine.setText(f"{'GPU' if dev.startswith('cuda') else 'CPU'} ({dev}) | "
                                       f"model {a.info.get('model_id')} {res}x{res}")
        elif isinstance(a, rq.Thumbnails):
            if a.generation >= self.generation:
                self.attributes.set_thumbnails(a.strips)
        elif isinstance(a, rq.Progress):
            self.statusBar().showMessage(a.text)
        elif isinstance(a, rq.Done):
            self.statusBar().showMessage(a.text, 8000)
            if a.path and a.path == self.export_path:
                self.exported_state = True
        elif isinstance(a, rq.Failed):
            self._failed(a)

    def _show_frame(self, f: rq.Frame) -> None:
        self.last_frame = f
        self.canvas.set_frame(f.image, f.scale)
        self.canvas.faces = f.faces
        self.canvas.face_index = f.face_index
        if not self.latent.isHidden():
            self.latent.set_latent(f.latent)
        self.attributes.set_hold(f.hold)
        self.attributes.set_values(f.sliders)
        if f.edited and f.mode == "edit" and f.work != "view":  # a new edit, not a redraw of the exported one
            self.exported_state = False
        self.act_undo.setEnabled(f.can_undo)
        self.act_redo.setEnabled(f.can_redo)
        self._show_timing(f)
        name = f.name + (" *" if f.edited else "")
        self.setWindowTitle(f"{name} - Neural Photo Editor")
        self.frame_shown.emit(f)

    def _show_timing(self, f: rq.Frame) -> None:
        """The engine time of the last update, named. While painting: each brush step (the live
        figure). When the stroke ends: the median step of that stroke, then what finishing took.
        Redraws (resizing, views) leave the last edit's figure in place."""
        if f.work == "view":
            return
        if f.work == "brush step":
            self._stroke_ms.append(f.ms)
            text = f"brush step {f.ms:.0f} ms"
        elif f.work == "stroke end" and self._stroke_ms:
            text = (f"brush step {statistics.median(self._stroke_ms):.0f} ms (median of {len(self._stroke_ms)}); "
                    f"finishing the stroke {f.ms:.0f} ms")
        else:
            text = f"{f.work or 'update'} {f.ms:.0f} ms"
        self.status_timing.setText(text + " ")

    def _opened(self, o: rq.Opened) -> None:
        self.opened = o
        self.document_path = o.path
        self.export_path = None
        self.exported_state = True
        if Path(o.path).parent != recovery.autosave_dir():
            self.settings.add_recent_file(o.path)
        n = len(o.faces)
        if o.no_face:
            msg = (f"No face was found in {o.name}; the whole image is used. "
                   "Use Tools > Place face box (F) to mark the face.")
            self.statusBar().showMessage(msg, 15000)
            self.message.emit(msg)
        else:
            extra = " Click another outline to edit that face." if n > 1 else ""
            self.statusBar().showMessage(f"Opened {o.name}: {n} face{'s' if n > 1 else ''} found "
                                         f"({o.ms:.0f} ms).{extra}", 10000)
        self.act_faces.setChecked(n > 1 or o.no_face)
        self.canvas.show_faces = self.act_faces.isChecked()
        self._update_actions()

    def _failed(self, a: rq.Failed) -> None:
        self.errors.append(a.message)
        self.statusBar().showMessage(a.message, 15000)
        self.message.emit(a.message)
        if a.fatal:
            self.status_engine.setText("no model loaded")
            self.attributes.set_unavailable("No model is loaded, so there are no sliders.")
            self.canvas.clear(f"The model could not be loaded:\n{a.message}")
        if self.ask and (a.fatal or a.request in ("OpenPhoto", "OpenSession", "Export", "SaveSession")):
            QMessageBox.warning(self, "Neural Photo Editor", a.message)
        self._update_actions()

    def _update_actions(self) -> None:
        has = self.opened is not None
        for a in (self.act_export, self.act_export_as, self.act_save_session, self.act_reset, self.act_sample):
            a.setEnabled(has)
        if not has:
            self.act_undo.setEnabled(False)
            self.act_redo.setEnabled(False)

    # ---- events ----------------------------------------------------------------------------------
    def showEvent(self, event: object) -> None:  # noqa: N802
        super().showEvent(event)  # type: ignore[arg-type]
        self._send_view()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() == COMPARE_KEY and not event.isAutoRepeat():
            self.comparing = True
            self._send_view()
            self.statusBar().showMessage("Original photo (release \\ to see the edit)")
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() == COMPARE_KEY and not event.isAutoRepeat():
            self.comparing = False
            self._send_view()
            self.statusBar().clearMessage()
            return
        super().keyReleaseEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and urls[0].toLocalFile().lower().endswith(READABLE_SUFFIXES + (".npe",)):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            self.open_path(urls[0].toLocalFile())

    def show_shortcuts(self) -> None:
        rows = [(a.text().replace("&", ""), a.shortcut().toString())
                for a in self.actions() if not a.shortcut().isEmpty()]
        rows.append(("Compare with the original", "hold \\"))
        text = "\n".join(f"{k:<28} {v}" for k, v in rows)
        box = QMessageBox(self)
        box.setWindowTitle("Keyboard shortcuts")
        box.setText(f"<pre>{text}</pre>")
        box.exec()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if not self._confirm_discard():
            event.ignore()
            return
        self.settings.save()
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the worker thread (idempotent); a clean exit leaves no autosave behind."""
        t0 = time.perf_counter()
        if self.worker.stop() and self.autosave_path is not None:
            recovery.discard(self.autosave_path)
        self._shutdown_ms = (time.perf_counter() - t0) * 1000

    def offer_recovery(self) -> bool:
        """After a crash: offer to restore the newest orphaned autosave. Returns whether it did."""
        orphans = recovery.find_orphans()
        if not orphans:
            return False
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(orphans[0].stat().st_mtime))
        if not self._question(f"The editor did not close properly. Restore the work autosaved at {when}?"):
            for p in orphans:
                recovery.discard(p)
            return False
        path = recovery.adopt(orphans[0])
        for p in orphans[1:]:
            recovery.discard(p)
        self.open_path(str(path))
        return True
