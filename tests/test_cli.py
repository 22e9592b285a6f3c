"""The command line: parsing, headless edits through the engine, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import UsageError, main, parse_attr, parse_stroke


def test_parse_stroke() -> None:
    rgb, r, pts = parse_stroke("#ff8000:12:1,2;3.5,4")
    assert rgb == (255, 128, 0)
    assert r == 12
    assert pts == [(1, 2), (3.5, 4)]
    for bad in ("ff8000:12", "#gg0000:1:1,2", "#ff0000:0:1,2", "#ff0000:3:1;2"):
        with pytest.raises(UsageError):
            parse_stroke(bad)
    assert parse_attr("smiling=1.5") == ("smiling", 1.5)
    with pytest.raises(UsageError):
        parse_attr("smiling")


def test_info_prints_json(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--weights", str(tiny_model_dir), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resolution"] == 32
    assert info["latent_dim"] == 16
    assert info["device"] == "cpu"
    assert info["attributes"] == ["smiling", "eyeglasses"]
    assert info["weights"].endswith("model.safetensors")


def test_bench_prints_every_figure(tiny_model_dir: Path, face_photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--weights", str(tiny_model_dir), "--device", "cpu", "--threads", "1",
                 "--photo", str(face_photo), "--events", "20"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("decoder_step_ms", "open_to_editable_ms", "brush_event_ms_p50", "brush_event_ms_p95",
                "display_ms_p95", "slider_event_ms_p50", "export_ms", "peak_rss_mb"):
        assert figures[key] > 0, key
    assert figures["brush_events"] == 10  # the first 10 samples warm up


def test_a_closed_pipe_is_not_an_error(tiny_model_dir: Path) -> None:
    """`npe info | head -1`: the reader goes away; no error message, the shell's SIGPIPE status."""
    with subprocess.Popen([sys.executable, "-m", "engine.cli", "info", "--weights", str(tiny_model_dir)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        assert p.stdout is not None
        assert p.stderr is not None
        p.stdout.close()  # before the program (still importing torch) writes anything
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141
    assert err == ""


def test_edit_writes_the_edited_photo(tiny_model_dir: Path, face_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    rc = main(["edit", str(face_photo), "-o", str(out), "--weights", str(tiny_model_dir),
               "--stroke", "#ffffff:6:30,30;50,32;60,40", "--stroke", "#000000:4:20,70;40,70",
               "--attr", "smiling=1.5"])
    assert rc == 0
    a = np.asarray(Image.open(face_photo).convert("RGB"))
    with Image.open(out) as im:
        b = np.asarray(im.convert("RGB"))
    assert a.shape == b.shape
    assert not np.array_equal(a, b)


def test_edit_matches_the_gui_engine_path(tiny_model_dir: Path, face_photo: Path, tmp_path: Path) -> None:
    """The CLI replays a stroke exactly as a session does, point by point."""
    from engine.pipeline import Engine, open_session

    out = tmp_path / "out.png"
    main(["edit", str(face_photo), "-o", str(out), "--weights", str(tiny_model_dir),
          "--stroke", "#ffffff:6:30,30;50,32"])
    s, _ = open_session(Engine.load(tiny_model_dir, "cpu"), face_photo)
    s.brush_begin((255, 255, 255), 6)
    s.brush_to([(30, 30)])
    s.brush_to([(50, 32)])
    s.brush_end()
    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), s.composite())


@pytest.mark.parametrize(("args", "message"), [
    (["edit", "missing.jpg", "-o", "x.png"], "does not exist"),
    (["edit", "{photo}", "-o", "x.png", "--stroke", "nonsense"], "bad --stroke"),
    (["edit", "{photo}", "-o", "x.png", "--attr", "nope=1"], "unknown attribute"),
    (["edit", "{photo}", "-o", "{out}/x.gif"], "export as"),
    (["info", "--device", "cuda:7"], "no CUDA|CUDA"),
])
def test_errors_are_one_line_and_nonzero(args: list[str], message: str, tiny_model_dir: Path, face_photo: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(photo=face_photo, out=tmp_path) for a in args] + ["--weights", str(tiny_model_dir)]
    if args[0] == "info" and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1
    assert err.startswith("npe ")
    assert __import__("re").search(message, err)


def test_missing_model_is_a_clear_error(tmp_path: Path, face_photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["edit", str(face_photo), "-o", str(tmp_path / "o.png"), "--weights", str(tmp_path / "none")])
    assert rc == 2
    assert "missing" in capsys.readouterr().err


def test_engine_never_imports_qt() -> None:
    code = ("import sys, engine.cli, engine.session, engine.pipeline, engine.train, engine.document, "
            "engine.faces, engine.landmarks, engine.attributes; "
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'PyQt', 'pyqtgraph', 'editor'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
