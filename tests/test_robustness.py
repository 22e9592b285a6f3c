"""Nothing lost, nothing crashes: a bad-input corpus, full disks, stress, fuzzing, recovery.

The corpus is generated here at test time; nothing large is committed.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from editor.worker import EngineWorker
from engine.core import requests as rq
from engine.core.images import ImageError, Photo, atomic_write, decode_photo, load_photo
from engine.core.pipeline import Engine, open_session
from engine.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _face_like(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    a = np.stack([128 + 60 * np.sin(xx / 7), 110 + 40 * np.cos(yy / 5), 90 + 0 * xx], -1)
    return Image.fromarray(a.astype(np.uint8))


def _bomb_png(w: int = 50000, h: int = 50000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _animated_gif() -> bytes:
    frames = [_face_like(), Image.new("RGB", (96, 96), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return _save(_face_like().resize((120, 96)), "JPEG", exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    return _save(Image.fromarray((np.arange(96 * 96).reshape(96, 96) * 7 % 65535).astype(np.uint16)), "PNG")


# name -> (file name, bytes, None if it must open, else a fragment of the error message)
CORPUS: dict[str, tuple[str, bytes, str | None]] = {
    "empty file": ("empty.jpg", b"", "empty"),
    "truncated JPEG": ("cut.jpg", _save(_face_like(), "JPEG")[:700], "damaged"),
    "text named .jpg": ("notes.jpg", b"shopping list: eggs, milk\n" * 20, "not an image"),
    "1x1 image": ("dot.png", _save(Image.new("RGB", (1, 1)), "PNG"), "too small"),
    "50000x50000 PNG header": ("bomb.png", _bomb_png(), "megapixels"),
    "CMYK JPEG": ("cmyk.jpg", _save(_face_like().convert("CMYK"), "JPEG"), None),
    "16-bit PNG": ("deep.png", _sixteen_bit(), None),
    "animated GIF": ("anim.gif", _animated_gif(), None),
    "EXIF-rotated photo": ("rotated.jpg", _exif_rotated(), None),
    "non-ASCII path": ("фото 照片.png", _save(_face_like(), "PNG"), None),
}


def write_corpus(folder: Path) -> dict[str, Path]:
    paths = {}
    for case, (name, data, _) in CORPUS.items():
        p = folder / name
        p.write_bytes(data)
        paths[case] = p
    return paths


@pytest.mark.parametrize("case", list(CORPUS))
def test_loader_gives_a_photo_or_the_clear_error(case: str, tmp_path: Path) -> None:
    path = write_corpus(tmp_path)[case]
    expected = CORPUS[case][2]
    if expected is None:
        photo = load_photo(path)
        assert photo.pixels.dtype == np.uint8
        assert photo.pixels.shape[2] == 3
    else:
        with pytest.raises(ImageError, match=expected):
            load_photo(path)


@pytest.mark.parametrize("case", list(CORPUS))
def test_cli_edit_exits_cleanly_for_every_case(case: str, tmp_path: Path, tiny_model_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_corpus(tmp_path)[case]
    out = tmp_path / "out.png"
    rc = main(["edit", str(path), "-o", str(out), "--weights", str(tiny_model_dir),
               "--stroke", "#202020:5:20,20;40,25"])
    err = capsys.readouterr().err
    if CORPUS[case][2] is None:
        assert rc == 0
        assert out.exists()
    else:
        assert rc == 2
        assert not out.exists()
        assert len(err.strip().splitlines()) == 1
        assert CORPUS[case][2] in err


def test_cli_align_without_a_face_is_one_line(tmp_path: Path, tiny_model_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "flat.png"
    Image.new("RGB", (200, 200), (120, 120, 120)).save(p)
    assert main(["align", str(p), "-o", str(tmp_path / "c.png"), "--weights", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no face" in err


def test_a_file_removed_while_open_loses_nothing(engine: Engine, face_photo: Path, tmp_path: Path) -> None:
    from engine.core.document import load_session, save_session

    session, faces = open_session(engine, face_photo)
    face_photo.unlink()
    session.brush_begin((10, 10, 10), 6)
    session.brush_to([(30, 30), (50, 40)])
    session.brush_end()
    save_session(session, tmp_path / "s.npe", faces, 0)
    again, _, _ = load_session(engine, tmp_path / "s.npe")
    assert np.array_equal(again.composite(), session.composite())


def test_a_full_disk_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "export.png"
    target.write_bytes(b"the previous export")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.core.images.os.fsync", no_space)
    with pytest.raises(ImageError, match="No space left"):
        atomic_write(target, b"new data")
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.png"]  # no temporary left behind


def test_a_read_only_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("engine.core.images._create_beside", refuse)
    with pytest.raises(ImageError, match=f"no permission to write in the folder {tmp_path}.*Permission denied"):
        atomic_write(tmp_path / "x.png", b"data")


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=f"could not write x.png: the folder {tmp_path / 'gone'} does not exist"):
        atomic_write(tmp_path / "gone" / "x.png", b"data")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ImageError, match="is a file, not a folder"):
        atomic_write(tmp_path / "file" / "x.png", b"data")


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for a test; the old one comes back after it."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_an_ordinary_write_gives(mask: int, mode: int, umask: Callable[[int], None],
                                                          tmp_path: Path) -> None:
    umask(mask)
    atomic_write(tmp_path / "new.png", b"data")
    (tmp_path / "plain.png").write_bytes(b"data")
    assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.png").stat().st_mode) == mode


def test_an_overwrite_keeps_the_files_own_mode(umask: Callable[[int], None], tmp_path: Path) -> None:
    umask(0o077)
    target = tmp_path / "shared.png"
    target.write_bytes(b"old")
    target.chmod(0o664)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o664


def _write_with_every_writer(tiny_model_dir: Path, photo: Path, out: Path) -> dict[str, Path]:
    """Each way the program writes a user's file: npe edit, npe align, a session, the GUI's
    export and the autosave (both through the editor's worker)."""
    from engine.core.document import save_session

    written = {"npe edit": out / "edit.png", "npe align": out / "crop.png", "session": out / "s.npe",
               "GUI export": out / "export.jpg", "autosave": out / "autosave.npe"}
    assert main(["edit", str(photo), "-o", str(written["npe edit"]), "--weights", str(tiny_model_dir),
                 "--stroke", "#ffffff:6:100,80;130,82"]) == 0
    assert main(["align", str(photo), "-o", str(written["npe align"]), "--weights", str(tiny_model_dir)]) == 0
    engine = Engine.load(tiny_model_dir, "cpu")
    session, faces = open_session(engine, photo)
    save_session(session, written["session"], faces, 0)
    done = threading.Event()
    worker = EngineWorker(lambda: engine, lambda a: done.set() if isinstance(a, (rq.Done, rq.Failed)) else None,
                          autosave_path=written["autosave"], autosave_seconds=0.0)
    worker.start()
    worker.send(rq.OpenPhoto(id=1, path=str(photo)))
    worker.send(rq.Sample(id=2, seed=1))  # an edit, so there is something to autosave
    worker.send(rq.Export(id=3, path=str(written["GUI export"])))
    assert done.wait(60)
    assert worker.stop()
    return written


def test_every_writer_gives_files_others_can_read(umask: Callable[[int], None], tiny_model_dir: Path,
                                                  tmp_path: Path, astronaut: np.ndarray,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut[:, :, :3]).resize((256, 256)).save(photo)
    umask(0o022)
    first = tmp_path / "first"
    first.mkdir()
    for what, path in _write_with_every_writer(tiny_model_dir, photo, first).items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, what
    # overwriting files that were made group-writable keeps them so
    for path in first.iterdir():
        path.chmod(0o664)
    for what, path in _write_with_every_writer(tiny_model_dir, photo, first).items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, what


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        photo = decode_photo(data, "fuzz")
    except ImageError:
        return
    assert isinstance(photo, Photo)
    assert photo.pixels.ndim == 3


_SEEDS = [_save(_face_like(48), "PNG"), _save(_face_like(48), "JPEG"), _save(_face_like(48), "GIF"),
          _save(_face_like(48), "BMP"), _save(_face_like(48), "WEBP"), _save(_face_like(48), "TIFF")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(_SEEDS), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                      max_size=8), cut=st.integers(0, 10**6))
def test_fuzz_mutated_images(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    data = data[: max(1, cut % (len(data) + 1))]
    try:
        photo = decode_photo(bytes(data), "fuzz")
    except ImageError:
        return
    assert photo.pixels.dtype == np.uint8
    assert photo.pixels.shape[2] == 3


@pytest.mark.slow
def test_ten_thousand_brush_samples_through_the_worker(tiny_model_dir: Path, face_photo: Path,
                                                      brush_moves: list[int]) -> None:
    """As fast as possible through the real worker path; the result equals the merged stroke."""
    n = 10_000
    rng = np.random.default_rng(0)
    points = [(float(x), float(y)) for x, y in rng.uniform(10, 86, (n, 2))]
    done = threading.Event()
    frames: list[rq.Frame] = []

    def emit(a: object) -> None:
        if isinstance(a, rq.Frame):
            frames.append(a)
            if a.id == n + 3:
                done.set()

    before_threads = set(threading.enumerate())
    worker = EngineWorker(lambda: Engine.load(tiny_model_dir, "cpu"), emit)
    worker.start()
    worker.send(rq.OpenPhoto(id=1, path=str(face_photo)))
    worker.send(rq.StrokeBegin(id=2, color=(30, 20, 10), radius=4.0))
    tracemalloc.start()
    for i, p in enumerate(points):
        worker.send(rq.StrokeMove(id=3 + i, points=(p,)))
    worker.send(rq.StrokeEnd(id=n + 3))
    assert done.wait(300)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert worker.stop()
    moves = list(brush_moves)
    assert sum(moves) == n  # every sample arrived, merged into len(moves) updates
    print(f"\n10,000 samples -> {len(moves)} latent updates, {len(frames)} frames, "
          f"traced peak {peak / 2**20:.1f} MiB")
    assert peak < 64 * 2**20
    assert not [t for t in threading.enumerate() if t not in before_threads and t.is_alive()]

    # replay the same merged groups directly on a fresh session
    s, _ = open_session(Engine.load(tiny_model_dir, "cpu"), face_photo)
    s.brush_begin((30, 20, 10), 4.0)
    i = 0
    for k in moves:
        s.brush_to(points[i:i + k])
        i += k
    s.brush_end()
    assert torch.equal(s.z, worker.service.session.z)
    assert np.array_equal(frames[-1].latent, s.latent_grid())


def test_gpu_failure_falls_back_to_the_cpu(tiny_model_dir: Path, face_photo: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[object] = []
    done = threading.Event()

    def emit(a: object) -> None:
        answers.append(a)
        if isinstance(a, rq.Frame) and a.id == 4:
            done.set()

    # the first brush update fails as it would on a GPU out of memory: the worker must move
    # model and session to the CPU, say so, and redo the update
    worker = EngineWorker(lambda: Engine.load(tiny_model_dir, "cpu"), emit)
    calls = {"n": 0}
    from engine.core.session import EditSession

    real = EditSession.brush_to

    def flaky(self: EditSession, pts: list[tuple[float, float]]) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, pts)

    monkeypatch.setattr(EditSession, "brush_to", flaky)
    worker.start()
    worker.send(rq.OpenPhoto(id=1, path=str(face_photo)))
    worker.send(rq.StrokeBegin(id=2, color=(0, 0, 0), radius=5.0))
    worker.send(rq.StrokeMove(id=3, points=((30.0, 30.0),)))
    worker.send(rq.StrokeEnd(id=4))
    assert done.wait(60)
    assert worker.stop()
    notes = [a.message for a in answers if isinstance(a, rq.Failed)]
    assert any("continuing on the CPU" in m for m in notes)
    assert worker.service.engine.device.type == "cpu"
    assert calls["n"] == 2


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, time
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtWidgets import QApplication
    from editor.main_window import MainWindow
    from engine.core.pipeline import Engine
    app = QApplication([])
    w = MainWindow(lambda: Engine.load(sys.argv[1], "cpu"), ask=False)
    w.worker.autosave_seconds = 0.2
    w.show()
    w.open_path(sys.argv[2])
    def step():
        if w.last_frame is None:
            return
        timer.stop()
        w._send(__import__("engine.core.requests", fromlist=["x"]).Sample, seed=5)
    from PySide6.QtCore import QTimer
    timer = QTimer(); timer.timeout.connect(step); timer.start(50)
    def check():
        if w.autosave_path.exists() and w.worker.service and w.worker.service._autosaved is not None:
            print("AUTOSAVED", w.autosave_path, flush=True)
    t2 = QTimer(); t2.timeout.connect(check); t2.start(100)
    app.exec()
""")


@pytest.mark.slow
def test_kill_9_then_restore_gives_the_last_autosaved_image(qtbot, tiny_model_dir: Path, face_photo: Path,
                                                             tmp_path: Path) -> None:
    import signal

    from editor import recovery
    from editor.main_window import MainWindow
    from engine.core.document import load_session

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(tiny_model_dir), str(face_photo)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT) as proc:
        try:
            line = ""
            while "AUTOSAVED" not in line:
                line = proc.stdout.readline()
                assert line or proc.poll() is None, "the editor process ended before autosaving"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    orphans = recovery.find_orphans()
    assert len(orphans) == 1
    expected, _, _ = load_session(Engine.load(tiny_model_dir, "cpu"), orphans[0])
    expected_z = expected.z.clone()

    w = MainWindow(lambda: Engine.load(tiny_model_dir, "cpu"), ask=False)
    qtbot.addWidget(w)
    w.show()
    assert w.offer_recovery()
    qtbot.waitUntil(lambda: w.last_frame is not None and w.last_frame.edited, timeout=30000)
    assert torch.equal(w.worker.service.session.z, expected_z)
    assert np.array_equal(w.worker.service.session.composite(), expected.composite())
    w.close()
    assert recovery.find_orphans() == []
