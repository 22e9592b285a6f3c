"""A photo with several faces: each is edited in turn, and the picture shown, the export and
the session file keep every face's edits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.core import requests as rq
from engine.core.document import WHOLE_IMAGE, load_document
from engine.core.pipeline import Engine
from engine.core.service import EditService


@pytest.fixture
def two_people(astronaut: np.ndarray, tmp_path: Path) -> Path:
    face = astronaut[40:300, 110:340]
    canvas = np.full((330, 620, 3), 200, np.uint8)
    canvas[20:280, 20:250] = face
    canvas[60:268, 380:564] = cv2.resize(face, (184, 208), interpolation=cv2.INTER_AREA)[:, ::-1]
    p = tmp_path / "two.png"
    Image.fromarray(canvas).save(p)
    return p


def _changed_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.nonzero(np.abs(a.astype(int) - b.astype(int)).sum(axis=(0, 2)))[0]


def test_each_face_keeps_its_edits(tiny_model_dir: Path, two_people: Path, tmp_path: Path) -> None:
    service = EditService(Engine.load(tiny_model_dir, "cpu"), lambda a: None)
    service.handle(rq.View(width=620, height=330))
    service.handle(rq.OpenPhoto(path=str(two_people)))
    assert len(service.faces) == 2
    original = np.asarray(Image.open(two_people).convert("RGB"))
    left = min(range(2), key=lambda i: service.faces[i].eyes[:, 0].mean())
    right = 1 - left
    service.handle(rq.ChooseFace(index=left))
    service.handle(rq.Sample(seed=1))
    service.handle(rq.ChooseFace(index=right))
    service.handle(rq.Sample(seed=2))
    out = tmp_path / "both.png"
    service.handle(rq.Export(path=str(out)))
    exported = np.asarray(Image.open(out).convert("RGB"))
    cols = _changed_columns(exported, original)
    assert cols.min() < 250 < cols.max()  # both people changed
    # back to the first face: its edit is still there, and undoable
    service.handle(rq.ChooseFace(index=left))
    assert service.session.can_undo
    frame = service.frame(1, 0.0)
    assert frame.edited
    assert np.array_equal(frame.image, exported)  # the view at full size is the export
    # the session file keeps both
    service.handle(rq.SaveSession(path=str(tmp_path / "both.npe")))
    doc = load_document(service.engine, tmp_path / "both.npe")
    assert sorted(doc.sessions) == [0, 1]
    assert doc.face_index == left
    assert np.array_equal(doc.composite(), exported)


def test_a_face_placed_by_hand_keeps_the_whole_image_edit(tiny_model_dir: Path, face_photo: Path,
                                                          tmp_path: Path) -> None:
    service = EditService(Engine.load(tiny_model_dir, "cpu"), lambda a: None)
    service.handle(rq.OpenPhoto(path=str(face_photo)))
    assert service.faces == []
    assert service.face_index == WHOLE_IMAGE
    service.handle(rq.Sample(seed=3))
    whole = service._need_document().composite()
    service.handle(rq.PlaceFace(rect=(20, 20, 70, 70)))
    assert service.face_index == 0
    assert not service.session.can_undo  # a new face: its own history
    assert np.array_equal(service._need_document().composite(), whole)  # the earlier edit stays
    service.handle(rq.SaveSession(path=str(tmp_path / "s.npe")))
    doc = load_document(service.engine, tmp_path / "s.npe")
    assert sorted(doc.sessions) == [WHOLE_IMAGE, 0]
    assert np.array_equal(doc.composite(), whole)
