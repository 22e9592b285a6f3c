"""A replayed stroke through the real window: how long the event loop is ever blocked, and
whether lag builds up. Reports figures (printed with ``-s``); asserts behaviour, not timings.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt, QTimer

from editor.main_window import MainWindow
from engine.core.checkpoint import DEFAULT_MODEL_DIR
from engine.core.pipeline import Engine

SAMPLES = 240
SAMPLE_MS = 8  # a 125 Hz mouse


def replay_stroke(qtbot, w: MainWindow) -> dict[str, float]:
    canvas = w.canvas
    cx, cy = canvas.width() // 2, canvas.height() // 2
    pts = [QPoint(int(cx - 120 + i), int(cy - 60 + 20 * np.sin(i / 15))) for i in range(SAMPLES)]
    beats: list[float] = []
    heart = QTimer()
    heart.setInterval(2)
    heart.timeout.connect(lambda: beats.append(time.perf_counter()))
    frames: list[float] = []
    w.frame_shown.connect(lambda f: frames.append(time.perf_counter()))
    state = {"i": 0}
    mover = QTimer()
    mover.setInterval(SAMPLE_MS)

    def move() -> None:
        i = state["i"]
        if i == 0:
            qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=pts[0])
        elif i < len(pts):
            qtbot.mouseMove(canvas, pts[i])
        else:
            mover.stop()
            qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=pts[-1])
            state["released"] = time.perf_counter()  # type: ignore[assignment]
        state["i"] = i + 1

    mover.timeout.connect(move)
    heart.start()
    start = time.perf_counter()
    mover.start()
    qtbot.waitUntil(lambda: "released" in state, timeout=60000)
    qtbot.waitUntil(lambda: w.last_frame is not None and w.last_frame.can_undo, timeout=60000)
    done = time.perf_counter()
    heart.stop()
    gaps = np.diff(beats) * 1000
    during = [f for f in frames if start <= f <= state["released"]]
    return {
        "samples": SAMPLES,
        "max_event_loop_block_ms": round(float(gaps.max()), 1),
        "p99_event_loop_block_ms": round(float(np.percentile(gaps, 99)), 1),
        "frames_during_stroke": len(during),
        "release_to_final_frame_ms": round((done - state["released"]) * 1000, 1),
        "worker_brush_updates": w.worker.steps,
    }


@pytest.mark.parametrize("which", ["tiny", pytest.param("shipped", marks=pytest.mark.weights)])
def test_a_long_stroke_keeps_the_window_responsive(qtbot, which: str, tiny_model_dir: Path,
                                                   face_photo: Path) -> None:
    if which == "shipped" and not (DEFAULT_MODEL_DIR / "model.safetensors").exists():
        pytest.skip("no shipped model")
    model_dir = tiny_model_dir if which == "tiny" else DEFAULT_MODEL_DIR
    photo = face_photo if which == "tiny" else DEFAULT_MODEL_DIR.parent / "resources" / "astronaut.png"
    w = MainWindow(lambda: Engine.load(model_dir, "cpu"), ask=False, autosave=False)
    qtbot.addWidget(w)
    w.resize(1100, 750)
    w.show()
    with qtbot.waitSignal(w.frame_shown, timeout=60000):
        w.open_path(str(photo))
    figures = replay_stroke(qtbot, w)
    print(f"\nresponsiveness ({which} model): {figures}")
    w.close()
    # every sample reached the engine, merged into fewer updates when the engine lagged
    assert 0 < figures["worker_brush_updates"] <= SAMPLES
    assert figures["frames_during_stroke"] > 0  # the image followed the stroke live
