"""Face detection and alignment on real, redistributable photographs.

resources/astronaut.png: NASA portrait of Eileen Collins (public domain, as shipped by
scikit-image). resources/camera.png: Lav Varshney's "camera" (CC0, scikit-image), a man
in profile behind a camera: no frontal face. Rotated and two-face photos are made from
them at test time.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.core import align
from engine.core.checkpoint import DEFAULT_MODEL_DIR
from engine.core.faces import find_faces, whole_image_face
from engine.core.images import Photo
from engine.core.landmarks import EyeRefiner
from engine.core.model_folder import ModelFolder
from engine.core.pipeline import detect
from tests.conftest import RESOURCES


# eye centres checked by hand on an 8x enlargement (viewer's left eye first)
def shipped_refiner() -> EyeRefiner | None:
    return ModelFolder.find(DEFAULT_MODEL_DIR).load_refiner()


ASTRONAUT_EYES = np.array([[203.8, 101.3], [246.9, 103.1]])
IOD = float(np.hypot(*(ASTRONAUT_EYES[1] - ASTRONAUT_EYES[0])))
MAX_EYE_ERROR = 0.15  # of the inter-ocular distance


def _eye_error(found: np.ndarray, truth: np.ndarray) -> float:
    iod = float(np.hypot(*(truth[1] - truth[0])))
    return float(np.linalg.norm(found - truth, axis=1).mean() / iod)


def _rotate(img: np.ndarray, angle: float, about: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = cv2.getRotationMatrix2D((float(about[0]), float(about[1])), angle, 1.0)
    out = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)
    return out, m


@pytest.mark.weights  # the shipped eye refiner
def test_astronaut_face_and_eyes(astronaut: np.ndarray) -> None:
    faces = detect(Photo(astronaut), shipped_refiner())
    assert len(faces) == 1
    assert _eye_error(faces[0].eyes, ASTRONAUT_EYES) < MAX_EYE_ERROR


@pytest.mark.weights
@pytest.mark.parametrize("angle", [25.0, -30.0])
def test_rotated_face_is_found_and_aligned_upright(astronaut: np.ndarray, angle: float) -> None:
    img, m = _rotate(astronaut, angle, ASTRONAUT_EYES.mean(0))
    truth = align.apply(m, ASTRONAUT_EYES)
    faces = detect(Photo(img), shipped_refiner())
    assert faces, "the tilted face was not found"
    assert _eye_error(faces[0].eyes, truth) < MAX_EYE_ERROR
    # the aligned crop is upright: its eyes are level
    t = faces[0].transform(128)
    eyes_in_crop = align.apply(t, truth)
    assert abs(eyes_in_crop[0, 1] - eyes_in_crop[1, 1]) < 0.1 * 128 * 0.26


def test_two_faces_are_both_found(astronaut: np.ndarray) -> None:
    face = astronaut[40:300, 110:340]  # the head and shoulders
    canvas = np.full((330, 620, 3), 200, np.uint8)
    canvas[20:280, 20:250] = face
    small = cv2.resize(face, (184, 208), interpolation=cv2.INTER_AREA)
    canvas[60:268, 380:564] = small[:, ::-1]  # a second, smaller, mirrored person
    faces = find_faces(canvas)
    assert len(faces) == 2
    centres = sorted(f.eyes.mean(0)[0] for f in faces)
    assert centres[0] < 250 < centres[1]


def test_no_face_in_the_camera_photo_nor_in_a_flat_image() -> None:
    camera = np.asarray(Image.open(RESOURCES / "camera.png").convert("RGB"))
    assert find_faces(camera) == []
    assert find_faces(np.full((300, 300, 3), 128, np.uint8)) == []


def test_whole_image_fallback_reads_the_image_as_a_template_crop() -> None:
    face = whole_image_face(200, 200)
    t = face.transform(64)
    assert np.allclose(align.apply(t, face.eyes), align.template_points(64))
    assert align.scale_of(t) == pytest.approx(64 / 200)


@pytest.mark.weights
def test_shipped_eye_refiner_recovers_from_a_rough_guess(astronaut: np.ndarray) -> None:
    refiner = shipped_refiner()
    if refiner is None:
        pytest.skip("pretrained/landmarks.safetensors is not shipped")
    centre = ASTRONAUT_EYES.mean(0)
    a = np.deg2rad(12)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    rough = (ASTRONAUT_EYES - centre) @ rot.T * 1.2 + centre + [0.15 * IOD, -0.1 * IOD]
    assert _eye_error(rough, ASTRONAUT_EYES) > 0.2
    assert _eye_error(refiner.refine(astronaut, rough), ASTRONAUT_EYES) < 0.08
