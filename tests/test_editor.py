"""The editor window, offscreen, with a tiny random model."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QPoint, Qt  # noqa: E402

from editor.main_window import MainWindow  # noqa: E402
from engine.core import requests as rq  # noqa: E402
from engine.core.attributes import Slider, SliderKind, SliderValues  # noqa: E402
from engine.core.pipeline import Engine  # noqa: E402

TIMEOUT = 20000


@pytest.fixture
def window(qtbot, tiny_model_dir: Path, face_photo: Path):
    w = MainWindow(lambda: Engine.load(tiny_model_dir, "cpu"), ask=False)
    qtbot.addWidget(w)
    w.resize(900, 600)
    w.show()
    with qtbot.waitSignal(w.frame_shown, timeout=TIMEOUT):
        w.open_path(str(face_photo))
    yield w
    w.close()
    assert not w.worker.alive


def _wait_frame(qtbot, w: MainWindow, check) -> rq.Frame:
    qtbot.waitUntil(lambda: w.last_frame is not None and check(w.last_frame), timeout=TIMEOUT)
    return w.last_frame


def _drag(qtbot, canvas, points: list[tuple[int, int]]) -> None:
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(*points[0]))
    for p in points[1:]:
        qtbot.mouseMove(canvas, QPoint(*p))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(*points[-1]))


def _canvas_centre_points(w: MainWindow) -> list[tuple[int, int]]:
    c = w.canvas
    cx, cy = c.width() // 2, c.height() // 2
    return [(cx - 60 + 6 * i, cy - 10 + i) for i in range(20)]


def test_painting_changes_the_image_and_undo_restores_it(qtbot, window: MainWindow) -> None:
    first = window.last_frame
    assert first is not None
    assert not first.edited
    window.settings.set_color((255, 255, 255))
    window.settings.set_brush_size(40)
    _drag(qtbot, window.canvas, _canvas_centre_points(window))
    frame = _wait_frame(qtbot, window, lambda f: f.can_undo)
    assert frame.edited
    assert not np.array_equal(frame.image, first.image)
    assert window.settings.recent_colors[0] == "#ffffff"

    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    frame = _wait_frame(qtbot, window, lambda f: not f.can_undo)
    assert np.array_equal(frame.image, first.image)
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    frame = _wait_frame(qtbot, window, lambda f: f.can_undo)
    assert frame.edited


def test_export_writes_the_full_photo(qtbot, window: MainWindow, tmp_path: Path) -> None:
    from PIL import Image

    _drag(qtbot, window.canvas, _canvas_centre_points(window))
    _wait_frame(qtbot, window, lambda f: f.can_undo)
    out = tmp_path / "exported.png"
    window._export_to(str(out))
    qtbot.waitUntil(lambda: window.exported_state, timeout=TIMEOUT)
    with Image.open(out) as im:
        assert im.size == window.opened.photo_size
    shown = window.last_frame
    window.resize(940, 640)  # a redraw of the exported edit is not a new edit
    _wait_frame(qtbot, window, lambda f: f is not shown and f.work == "view")
    assert window.exported_state


def test_export_refuses_to_overwrite_the_photo_without_asking(qtbot, window: MainWindow) -> None:
    asked: list[str] = []
    window.ask = True
    window._question = lambda text: asked.append(text) or False  # the user says no
    before = Path(window.opened.path).read_bytes()
    window._export_to(window.opened.path)
    assert asked
    assert "opened" in asked[0]
    assert Path(window.opened.path).read_bytes() == before


def test_sliders_preview_and_commit(qtbot, window: MainWindow) -> None:
    slider = window.attributes.sliders["smiling"]
    slider.setValue(150)  # not dragged: a keyboard-style change commits at once
    # the preview may be shown first; the commit follows as one undo step
    frame = _wait_frame(qtbot, window, lambda f: dict(f.sliders).get("smiling") == 1.5 and f.can_undo)
    assert frame.edited


def test_unlabelled_directions_show_what_they_change(qtbot, window: MainWindow) -> None:
    strip = window.attributes.strips["pc1"]
    qtbot.waitUntil(lambda: strip.pixmap() is not None and not strip.pixmap().isNull(), timeout=TIMEOUT)
    assert strip.pixmap().width() == 5 * strip.pixmap().height()


def test_conditional_toggle_changes_the_slider_direction(qtbot, window: MainWindow) -> None:
    window.attributes.sliders["smiling"].setValue(200)
    held = _wait_frame(qtbot, window, lambda f: dict(f.sliders).get("smiling") == 2.0).latent.copy()
    window.attributes.conditional.setChecked(False)
    plain = _wait_frame(qtbot, window, lambda f: not np.array_equal(f.latent, held)).latent
    session = window.worker.service.session
    d = session.attributes.directions
    # without holding, the change from the encoding is exactly along the stored direction
    change = plain.ravel() - session.z0[0].numpy()
    assert np.allclose(change, 2.0 * d[0].numpy(), atol=1e-5)
    # the mode is part of the edit: undo brings the held direction back, and the checkbox with it
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    frame = _wait_frame(qtbot, window, lambda f: f.hold)
    assert np.allclose(frame.latent, held)
    assert window.attributes.conditional.isChecked()


def test_latent_canvas_painting_sets_tiles(qtbot, window: MainWindow) -> None:
    window.latent.magnitude.setValue(20)
    window.latent.paint_at(0, 0, 1.0, finished=True)
    frame = _wait_frame(qtbot, window, lambda f: f.latent[0, 0] == pytest.approx(2.0))
    assert frame.can_undo


def test_view_modes_and_compare(qtbot, window: MainWindow) -> None:
    window.set_view("mask")
    _wait_frame(qtbot, window, lambda f: f.mode == "mask")
    qtbot.keyPress(window, Qt.Key.Key_Backslash)
    _wait_frame(qtbot, window, lambda f: f.mode == "original")
    qtbot.keyRelease(window, Qt.Key.Key_Backslash)
    _wait_frame(qtbot, window, lambda f: f.mode == "mask")


def test_brush_size_shortcuts(qtbot, window: MainWindow) -> None:
    size = window.settings.brush_size
    qtbot.keyClick(window, Qt.Key.Key_BracketRight)
    assert window.settings.brush_size > size
    qtbot.keyClick(window, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(window, Qt.Key.Key_BracketLeft)
    assert window.settings.brush_size < size


def test_bad_file_shows_a_message_and_keeps_the_photo(qtbot, window: MainWindow, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a jpeg")
    name = window.opened.name
    with qtbot.waitSignal(window.message, timeout=TIMEOUT) as sig:
        window.open_path(str(bad))
    assert "not an image" in sig.args[0]
    # still editable: the old photo stays
    _drag(qtbot, window.canvas, _canvas_centre_points(window))
    _wait_frame(qtbot, window, lambda f: f.can_undo)
    assert window.last_frame.name == name


def test_missing_model_shows_a_message(qtbot, tmp_path: Path) -> None:
    w = MainWindow(lambda: Engine.load(tmp_path / "nothing", "cpu"), ask=False)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.message, timeout=TIMEOUT) as sig:
        w.show()
    assert "missing" in sig.args[0]
    w.close()
    assert not w.worker.alive


def test_close_leaves_no_thread(qtbot, tiny_model_dir: Path, face_photo: Path) -> None:
    before = set(threading.enumerate())
    w = MainWindow(lambda: Engine.load(tiny_model_dir, "cpu"), ask=False)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.frame_shown, timeout=TIMEOUT):
        w.open_path(str(face_photo))
    w.close()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked


def test_sliders_that_failed_the_judge_show_only_on_request(qtbot) -> None:
    from editor.sliders import AttributePanel

    panel = AttributePanel()
    qtbot.addWidget(panel)
    direction = SliderKind.DIRECTION
    panel.set_sliders((Slider("smiling", "Smiling", direction, "good", "good"),
                       Slider("bald", "Bald", direction, "hidden", "hidden"),
                       Slider("male", "Male", direction, "weak", "weak"),
                       Slider("gray_hair", "Gray hair", direction, "hidden", "weak")))
    assert set(panel.sliders) == {"smiling", "male"}
    # gray hair passes the judge only with its correlated attribute (age) free
    panel.conditional.setChecked(False)
    assert set(panel.sliders) == {"smiling", "male", "gray_hair"}
    panel.conditional.setChecked(True)
    assert set(panel.sliders) == {"smiling", "male"}
    panel.show_failed.setChecked(True)
    assert set(panel.sliders) == {"smiling", "bald", "male", "gray_hair"}
    panel.set_values(SliderValues.of({"smiling": 1.0, "bald": -0.5}))
    # rebuilding keeps the engine's values on the sliders
    panel.show_failed.setChecked(False)
    assert panel.sliders["smiling"].value() == 100
    # a failed slider that holds a value stays visible, so it can be seen and reset
    assert panel.sliders["bald"].value() == -50
    panel.set_values(SliderValues.of({"smiling": 1.0}))
    panel.show_failed.setChecked(True)
    panel.show_failed.setChecked(False)
    assert "bald" not in panel.sliders
    panel.set_values(SliderValues.of({"bald": 0.5}))  # e.g. a session file: the slider appears with its value
    assert panel.sliders["bald"].value() == 50


def test_the_attribute_panel_says_the_model_is_loading(qtbot, tiny_model_dir: Path, tmp_path: Path) -> None:
    gate = threading.Event()

    def slow_factory() -> Engine:
        gate.wait(TIMEOUT / 1000)
        return Engine.load(tiny_model_dir, "cpu")

    w = MainWindow(slow_factory, ask=False, autosave=False)
    qtbot.addWidget(w)
    w.show()
    panel = w.attributes
    assert panel.empty.isVisibleTo(panel)
    assert "Loading the model" in panel.empty.text()
    assert "no attribute directions" not in panel.empty.text()
    gate.set()
    qtbot.waitUntil(lambda: w.ready, timeout=TIMEOUT)
    assert not panel.empty.isVisibleTo(panel)
    assert set(panel.sliders) >= {"smiling", "eyeglasses"}
    w.close()

    broken = MainWindow(lambda: Engine.load(tmp_path, "cpu"), ask=False, autosave=False)
    qtbot.addWidget(broken)
    qtbot.waitUntil(lambda: bool(broken.errors), timeout=TIMEOUT)
    assert broken.attributes.empty.text() == "No model is loaded, so there are no sliders."
    broken.close()


def test_the_status_bar_names_the_time_it_shows(qtbot, window: MainWindow) -> None:
    window.settings.set_brush_size(30)
    _drag(qtbot, window.canvas, _canvas_centre_points(window))
    _wait_frame(qtbot, window, lambda f: f.can_undo)
    text = window.status_timing.text().strip()
    # the live figure (per brush step) stays; what finishing the stroke took is named apart
    assert re.fullmatch(r"brush step \d+ ms \(median of \d+\); finishing the stroke \d+ ms", text) or \
        re.fullmatch(r"stroke end \d+ ms", text), text  # (a stroke handled in one batch has no live steps)
    assert "brush step" in window.status_timing.toolTip()
    window.attributes.sliders["smiling"].setValue(50)
    _wait_frame(qtbot, window, lambda f: dict(f.sliders).get("smiling") == 0.5)
    assert re.fullmatch(r"slider \d+ ms", window.status_timing.text().strip())
