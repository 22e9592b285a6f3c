"""A replayed stroke through the real window never blocks its event loop on the model, and
every sample reaches the engine. The figures themselves come from ``npe bench --window``;
the bound here is generous (a tenth of the stroke's own length) and fails only if the GUI
waits on the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from editor.bench_window import SAMPLE_MS, SAMPLES, replay_stroke
from editor.main_window import MainWindow
from engine.core.checkpoint import DEFAULT_MODEL_DIR
from engine.core.pipeline import Engine

MAX_BLOCK_MS = SAMPLES * SAMPLE_MS / 2  # one second: far above a redraw, below any wait on a model


@pytest.mark.slow
@pytest.mark.parametrize("which", ["tiny", pytest.param("shipped", marks=pytest.mark.weights)])
def test_a_long_stroke_keeps_the_window_responsive(qtbot, which: str, tiny_model_dir: Path, face_photo: Path,
                                                   brush_moves: list[int]) -> None:
    model_dir = tiny_model_dir if which == "tiny" else DEFAULT_MODEL_DIR
    photo = face_photo if which == "tiny" else DEFAULT_MODEL_DIR.parent / "resources" / "astronaut.png"
    w = MainWindow(lambda: Engine.load(model_dir, "cpu"), ask=False, autosave=False)
    qtbot.addWidget(w)
    w.resize(1100, 750)
    w.show()
    with qtbot.waitSignal(w.frame_shown, timeout=60000):
        w.open_path(str(photo))
    figures = replay_stroke(w)
    w.close()
    assert figures["max_event_loop_block_ms"] < MAX_BLOCK_MS, figures
    assert figures["frames_during_stroke"] > 0  # the image followed the stroke live
    # every sample reached the engine, merged into fewer updates when the engine lagged
    assert sum(brush_moves) == SAMPLES
    assert 0 < len(brush_moves) <= SAMPLES
