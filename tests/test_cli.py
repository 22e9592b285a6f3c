"""The command line: parsing, headless edits through the engine, and clear errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.tools.cli import UsageError, main, parse_attr, parse_stroke


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
    with pytest.raises(UsageError, match="'lots' is not a number"):
        parse_attr("smiling=lots")
    with pytest.raises(UsageError, match="finite"):
        parse_attr("smiling=nan")


def test_info_prints_json(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--weights", str(tiny_model_dir), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resolution"] == 32
    assert info["latent_dim"] == 16
    assert info["device"] == "cpu"
    assert info["attributes"] == ["smiling", "eyeglasses"]
    assert info["weights"].endswith("model.safetensors")


@pytest.mark.parametrize("model", ["tiny_model_dir", "tiny_conditioned_model_dir"])
def test_bench_prints_every_figure(model: str, face_photo: Path, capsys: pytest.CaptureFixture[str],
                                   request: pytest.FixtureRequest) -> None:
    """Every figure, for a model with latent-direction sliders and for a conditioned one (whose
    sliders move its attribute input)."""
    weights = request.getfixturevalue(model)
    assert main(["bench", "--weights", str(weights), "--device", "cpu", "--threads", "1",
                 "--photo", str(face_photo), "--events", "20"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("decoder_step_ms", "open_to_editable_ms", "brush_event_ms_p50", "brush_event_ms_p95",
                "display_ms_p95", "slider_first_event_ms", "slider_event_ms_p50", "slider_event_ms_p95",
                "export_ms", "peak_rss_mb"):
        assert figures[key] > 0, key
    assert figures["slider"] == "smiling"
    assert figures["brush_events"] == 10  # the first 10 samples warm up


def test_bench_says_when_the_model_has_no_slider_to_time(tiny_model_dir: Path, face_photo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "model"
    shutil.copytree(tiny_model_dir, weights)
    for f in weights.glob("attributes.*"):
        f.unlink()
    assert main(["bench", "--weights", str(weights), "--device", "cpu", "--threads", "1",
                 "--photo", str(face_photo), "--events", "20"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["slider"] is None
    assert "npe attributes" in figures["slider_note"]
    assert "slider_event_ms_p95" not in figures
    assert figures["brush_event_ms_p95"] > 0


def test_a_closed_pipe_is_not_an_error(tiny_model_dir: Path) -> None:
    """`npe info | head -1`: the reader goes away; no error message, the shell's SIGPIPE status."""
    with subprocess.Popen([sys.executable, "-m", "engine.tools.cli", "info", "--weights", str(tiny_model_dir)],
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
    from engine.core.pipeline import Engine, open_session

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
    (["edit", "missing.jpg", "-o", "{out}/x.png"], "does not exist"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--attr", "smiling=100"],
     r"smiling=100 is outside the slider's range, -2 to \+2"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--attr", "smiling=-2.5"], r"outside the slider's range, -2 to \+2"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--attr", "smiling=big"], "'big' is not a number"),
    (["edit", "{photo}", "-o", "{out}/no/such/folder/x.png"], r"the folder \S+/no/such/folder does not exist"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--face", "3"], "there is no face 3: no face was found"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--stroke", "#000000:5:5000,5000;5100,5000"],
     "stroke 1: the stroke lies entirely outside the photo"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--stroke", "nonsense"], "bad --stroke"),
    (["edit", "{photo}", "-o", "{out}/x.png", "--attr", "nope=1"], "unknown attribute"),
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


def test_edit_says_what_it_wrote(tiny_model_dir: Path, face_photo: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    assert main(["edit", str(face_photo), "-o", str(out), "--weights", str(tiny_model_dir),
                 "--stroke", "#ffffff:6:30,30;50,32", "--attr", "smiling=1.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(96x96; no face found: the whole image; 1 stroke, "
                        r"smiling=\+1.5; \d+\.\d s\)", lines[0]), lines[0]
    assert main(["edit", str(face_photo), "-o", str(out), "--weights", str(tiny_model_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(out)
    assert summary["size"] == [96, 96]
    assert summary["seconds"] > 0


def test_edit_help_lists_the_attributes_and_their_range(tiny_model_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["edit", "--help", "--weights", str(tiny_model_dir)])
    text = capsys.readouterr().out
    assert "VALUE from -2 to +2" in text
    assert re.search(r"^  smiling +Smiling$", text, re.M)
    assert re.search(r"^  eyeglasses +Eyeglasses  \(weak\)$", text, re.M)


def test_a_failed_slider_needs_asking_for_and_warns(model_with_a_failed_slider: Path, face_photo: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    argv = ["edit", str(face_photo), "-o", str(out), "--weights", str(model_with_a_failed_slider),
            "--attr", "eyeglasses=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the eyeglasses slider failed the attribute judge" in err
    assert "--allow-failed" in err
    assert not out.exists()
    assert main([*argv, "--allow-failed"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("npe edit: warning: the eyeglasses slider failed the attribute judge")
    assert out.exists()


def test_no_display_is_one_line_and_status_2(tmp_path: Path) -> None:
    """`npe` where no window can open: Qt would abort (SIGABRT, status 134); one line instead."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    if not sys.platform.startswith("linux"):
        pytest.skip("the xcb platform is Linux's")
    r = subprocess.run([sys.executable, "-m", "editor"], capture_output=True, text=True, timeout=120, env=env,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("npe: error: no display was found")
    assert "libxcb-cursor0" in lines[0]


def test_asking_for_a_face_that_is_not_there_says_how_many_there_are() -> None:
    from engine.core.faces import whole_image_face
    from engine.core.images import Photo
    from engine.core.pipeline import NoFaceError, choose_face

    photo = Photo(np.zeros((64, 64, 3), np.uint8), name="p.png")
    face = whole_image_face(64, 64)
    assert choose_face(photo, [face], 0) is face
    with pytest.raises(NoFaceError, match=r"^p.png: there is no face 3: 1 face was found, numbered 0$"):
        choose_face(photo, [face], 3)
    with pytest.raises(NoFaceError, match=r"^p.png: there is no face 2: 2 faces were found, numbered 0 to 1$"):
        choose_face(photo, [face, face], 2)
    with pytest.raises(NoFaceError, match="there is no face -1"):
        choose_face(photo, [face], -1)
