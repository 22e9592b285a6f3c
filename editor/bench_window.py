"""``npe bench --window``: the editor window's responsiveness while a long stroke is painted.

A stroke of mouse samples is replayed into the real window (offscreen when there is no
display) at a fixed rate while a 2 ms heartbeat timer runs on the GUI thread; a gap in the
heartbeat is the event loop being blocked. Figures, as one JSON object:

    max_event_loop_block_ms / p99    the longest (99th-percentile) heartbeat gap: the GUI's waits
    frames_during_stroke             pictures shown while the mouse was still moving
    release_to_final_frame_ms        from the mouse release to the stroke's finished picture
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from editor.app import DEFAULT_PHOTO, engine_factory
from editor.main_window import MainWindow

SAMPLES = 240
SAMPLE_MS = 8  # a 125 Hz mouse


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Run the event loop until ``condition`` holds; TimeoutError after ``timeout_s``."""
    end = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError(f"not done within {timeout_s:.0f} s")
        QApplication.processEvents()
        time.sleep(0.001)


def replay_stroke(w: MainWindow, samples: int = SAMPLES, sample_ms: int = SAMPLE_MS,
                  timeout_s: float = 120.0) -> dict[str, float]:
    """Paint one long stroke across the canvas's middle and measure the event loop meanwhile."""
    canvas = w.canvas
    cx, cy = canvas.width() // 2, canvas.height() // 2
    pts = [QPoint(int(cx - samples // 2 + i), int(cy - 60 + 20 * np.sin(i / 15))) for i in range(samples)]
    beats: list[float] = []
    heart = QTimer()
    heart.setInterval(2)
    heart.timeout.connect(lambda: beats.append(time.perf_counter()))
    frames: list[float] = []
    w.frame_shown.connect(lambda f: frames.append(time.perf_counter()))
    state: dict[str, float] = {"i": 0}
    mover = QTimer()
    mover.setInterval(sample_ms)
    left = Qt.MouseButton.LeftButton

    def move() -> None:
        i = int(state["i"])
        if i == 0:
            QTest.mousePress(canvas, left, Qt.KeyboardModifier.NoModifier, pts[0])
        elif i < len(pts):
            QTest.mouseMove(canvas, pts[i])
        else:
            mover.stop()
            QTest.mouseRelease(canvas, left, Qt.KeyboardModifier.NoModifier, pts[-1])
            state["released"] = time.perf_counter()
        state["i"] = i + 1

    mover.timeout.connect(move)
    heart.start()
    start = time.perf_counter()
    mover.start()
    wait_until(lambda: "released" in state, timeout_s)
    wait_until(lambda: w.last_frame is not None and w.last_frame.can_undo, timeout_s)
    done = time.perf_counter()
    heart.stop()
    gaps = np.diff(beats) * 1000
    return {
        "samples": samples,
        "max_event_loop_block_ms": round(float(gaps.max()), 1),
        "p99_event_loop_block_ms": round(float(np.percentile(gaps, 99)), 1),
        "frames_during_stroke": sum(start <= f <= state["released"] for f in frames),
        "release_to_final_frame_ms": round((done - state["released"]) * 1000, 1),
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="npe bench --window", description=__doc__.splitlines()[0])
    parser.add_argument("--window", action="store_true")
    parser.add_argument("--photo", default=str(DEFAULT_PHOTO))
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    w = MainWindow(engine_factory(args.weights, args.device), ask=False, autosave=False)
    w.resize(1100, 750)
    w.show()
    w.open_path(args.photo)
    wait_until(lambda: w.last_frame is not None, 300)
    figures: dict[str, float | str] = {**replay_stroke(w, args.samples), "model": str(w.info.get("model_id")),
                                       "device": str(w.info.get("device"))}
    w.close()
    app.processEvents()
    print(json.dumps(figures, indent=2))
    return 0
