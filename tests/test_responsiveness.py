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


def test_npe_bench_window_prints_the_figures(qtbot, tiny_model_dir: Path, face_photo: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`npe bench --window` goes to the editor's bench (the tools cannot import the editor)."""
    import json

    from editor.launch import main

    assert main(["bench", "--window", "--weights", str(tiny_model_dir), "--device", "cpu",
                 "--photo", str(face_photo), "--samples", "30"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["samples"] == 30
    assert figures["max_event_loop_block_ms"] > 0
    assert figures["model"] == "tiny-test"


def test_npe_sends_tool_commands_to_the_tools(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from editor.launch import main

    assert main(["info", "--weights", str(tiny_model_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == "tiny-test"
