"""Face detection and alignment on real, redistributable photographs.

resources/astronaut.png: NASA portrait of Eileen Collins (public domain, as shipped by
scikit-image). resources/camera.png: Lav Varshney's "camera" (CC0, scikit-image), a man
in profile behind a camera: no frontal face. Rotated and two-face photos are made from
them at test time.
"""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("box", [(182, 272, 72, 145), (185, 268, 75, 150)])
def test_a_face_that_fills_the_photo_is_found(astronaut: np.ndarray, box: tuple[int, int, int, int]) -> None:
    # cut at the brows' height above and through the mouth below: the face runs off every
    # edge, where the cascade's window cannot reach without the bordered search
    x0, x1, y0, y1 = box
    crop = np.ascontiguousarray(astronaut[y0:y1, x0:x1])
    faces = find_faces(crop)
    assert len(faces) == 1
    assert _eye_error(faces[0].eyes, ASTRONAUT_EYES - [x0, y0]) < MAX_EYE_ERROR


def test_no_face_in_the_camera_photo_nor_in_a_flat_image() -> None:
    camera = np.asarray(Image.open(RESOURCES / "camera.png").convert("RGB"))
    assert find_faces(camera) == []
    assert find_faces(np.full((300, 300, 3), 128, np.uint8)) == []


def test_the_second_cascade_searches_only_when_the_first_finds_no_sure_face(
        astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The astronaut's face is sure for the first cascade: the second is never asked. When the
    first finds nothing, the second searches (plain, then the bordered copy) and its face is kept."""
    from engine.core import faces as faces_module

    real = faces_module._candidates
    asked: list[str] = []

    def record(*args: object, **kw: object) -> list[object]:
        asked.append(str(kw.get("cascade", faces_module.FACE_CASCADES[0])))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(faces_module, "_candidates", record)
    assert len(find_faces(astronaut)) == 1
    assert set(asked) == {faces_module.FACE_CASCADES[0]}

    asked.clear()

    def first_is_blind(*args: object, **kw: object) -> list[object]:
        cascade = str(kw.get("cascade", faces_module.FACE_CASCADES[0]))
        asked.append(cascade)
        return [] if cascade == faces_module.FACE_CASCADES[0] else real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(faces_module, "_candidates", first_is_blind)
    found = find_faces(astronaut)
    assert asked[-1] == faces_module.FACE_CASCADES[1]
    assert len(found) == 1
    assert _eye_error(found[0].eyes, ASTRONAUT_EYES) < MAX_EYE_ERROR


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


def _points_file(path, eyes: np.ndarray, count: int) -> None:
    """A landmark file whose eye contours (six points on a small circle) centre on ``eyes``."""
    pts = np.zeros((count, 2))
    ring = np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1) * 5
    first = {49: 19, 68: 36}[count]
    pts[first:first + 6] = eyes[0] + ring
    pts[first + 6:first + 12] = eyes[1] + ring
    np.savetxt(path, pts, fmt="%.3f")


def test_eye_error_on_photos_with_hand_placed_landmarks(astronaut: np.ndarray, tmp_path) -> None:
    """npe eval --alignment on a folder laid out as All-Age-Faces ships it: photos, and a
    ``key points`` folder of 49-point (or 68-point) files; the worse eye's error is reported."""
    from engine.tools.evaluate import photo_alignment_metrics

    data = tmp_path / "faces"
    (data / "key points").mkdir(parents=True)
    Image.fromarray(astronaut).save(data / "00001A40.png")
    _points_file(data / "key points" / "00001A40.txt", ASTRONAUT_EYES, 49)
    Image.fromarray(astronaut[:, ::-1]).save(data / "00002A05.png")  # mirrored: the eyes swap sides
    mirrored = np.array([[astronaut.shape[1] - 1 - ASTRONAUT_EYES[1, 0], ASTRONAUT_EYES[1, 1]],
                         [astronaut.shape[1] - 1 - ASTRONAUT_EYES[0, 0], ASTRONAUT_EYES[0, 1]]])
    _points_file(data / "key points" / "00002A05.txt", mirrored, 68)
    Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(data / "00003A70.png")  # no face in it
    _points_file(data / "key points" / "00003A70.txt", ASTRONAUT_EYES * 0.2, 49)
    Image.fromarray(astronaut).save(data / "no-points.png")  # no landmark file: not counted

    out = photo_alignment_metrics(data, refiner=None)
    assert out["photos"] == 3
    assert out["detected"] == 2
    assert out["detection_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert out["worse_eye_error_cascade"]["p90"] < MAX_EYE_ERROR  # type: ignore[index]

    # an eye placed 0.2 inter-ocular distances off shows in the worse eye's error
    off = ASTRONAUT_EYES.copy()
    off[1, 1] += 0.2 * IOD
    _points_file(data / "key points" / "00001A40.txt", off, 49)
    worse = photo_alignment_metrics(data, refiner=None)["worse_eye_error_cascade"]
    assert worse["mean"] > out["worse_eye_error_cascade"]["mean"] + 0.05  # type: ignore[index]


def test_refiner_training_crops_are_degraded_but_keep_their_labels() -> None:
    from engine.tools.landmark_training import degrade, make_examples

    rng = np.random.default_rng(0)
    gray = cv2.cvtColor(np.asarray(Image.open(RESOURCES / "astronaut.png").convert("RGB")), cv2.COLOR_RGB2GRAY)
    changed = [degrade(gray, rng) for _ in range(8)]
    assert all(c.shape == gray.shape and c.dtype == np.uint8 for c in changed)
    assert all(np.abs(c.astype(int) - gray.astype(int)).mean() > 1 for c in changed)
    img = np.asarray(Image.open(RESOURCES / "astronaut.png").convert("RGB").resize((178, 218)))
    x_clean, y_clean = make_examples([img], np.random.default_rng(1), 4, augment=False)
    x_aug, y_aug = make_examples([img], np.random.default_rng(1), 4, augment=True)
    assert x_aug.shape == x_clean.shape
    assert not np.array_equal(x_aug, x_clean)
    # the degradation draws from the same generator, so the geometry differs but stays valid
    assert np.isfinite(y_aug).all()
    assert np.abs(y_aug).max() < 0.5


def test_the_equivariance_term_is_zero_only_when_both_crops_agree_in_the_photo() -> None:
    """Unlabelled faces teach the refiner through agreement: the eyes found in two differently
    turned crops of one face, mapped back into the photo, must be the same points."""
    import torch

    from engine.core.landmarks import INPUT
    from engine.tools.landmark_training import equivariance_examples, equivariance_loss

    gray = cv2.cvtColor(np.asarray(Image.open(RESOURCES / "astronaut.png").convert("RGB")), cv2.COLOR_RGB2GRAY)
    rough = ASTRONAUT_EYES + [[4.0, -3.0], [-2.0, 5.0]]  # the cascade's guess, a little off
    x, inverses, iods = equivariance_examples([(gray, rough)], np.random.default_rng(0), 3, augment=False)
    assert x.shape == (6, 1, INPUT, INPUT)
    assert inverses.shape == (3, 2, 2, 3)
    base = align.template_points(INPUT)

    class Fixed(torch.nn.Module):
        def __init__(self, eyes_in_photo: np.ndarray) -> None:
            super().__init__()
            rows = []
            for pair in inverses:
                for inv in pair:  # where those photo points fall in each crop
                    in_crop = align.apply(align.invert(inv.astype(np.float64)), eyes_in_photo)
                    rows.append(((in_crop - base) / INPUT).ravel())
            self.out = torch.tensor(np.array(rows), dtype=torch.float32)

        def forward(self, _x: torch.Tensor) -> torch.Tensor:
            return self.out

    agreeing = float(equivariance_loss(Fixed(ASTRONAUT_EYES), x, inverses, iods))
    assert agreeing < 1e-6  # any one point in the photo, found in both crops: no loss

    class Template(torch.nn.Module):  # always the template's eye places, whatever the crop shows
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 4)

    assert float(equivariance_loss(Template(), x, inverses, iods)) > 1e-3


def _celeba_folder(root: Path, img: Image.Image, count: int, held_out: bool) -> tuple[Path, list[str]]:
    """A data folder of ``count`` copies of ``img`` as aligned CelebA photos of different people,
    all of the held-out split or all of the training split. Returns it and the file names."""
    from engine.tools.data import _held_out

    data = root / "data"
    (data / "celeba" / "images").mkdir(parents=True)
    people = [p for p in (str(k) for k in range(300)) if _held_out("celeba:" + p) == held_out][:count]
    names = [f"{k + 1:06d}.jpg" for k in range(count)]
    for name in names:
        img.save(data / "celeba" / "images" / name, quality=95)
    identities = "".join(f"{n} {p}\n" for n, p in zip(names, people, strict=True))
    (data / "celeba" / "identity_CelebA.txt").write_text(identities)
    return data, names


def test_celeba_landmark_lists_read_in_either_format_and_scale_to_half_size_images(tmp_path) -> None:
    from engine.tools.data import celeba_eyes, read_celeba_landmarks

    rows = [("000001.jpg", [69, 109, 106, 113, 77, 142, 73, 152, 108, 154]),
            ("000002.jpg", [69, 110, 107, 112, 81, 135, 70, 151, 108, 153])]
    official = tmp_path / "official.txt"
    official.write_text("202599\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
                        "rightmouth_x rightmouth_y\n"
                        + "".join(f"{n} " + "  ".join(map(str, v)) + "\n" for n, v in rows))
    as_csv = tmp_path / "table.csv"
    as_csv.write_text("image_id,lefteye_x,lefteye_y,righteye_x,righteye_y,nose_x,nose_y,leftmouth_x,leftmouth_y,"
                      "rightmouth_x,rightmouth_y\n" + "".join(f"{n}," + ",".join(map(str, v)) + "\n" for n, v in rows)
                      + "000003.jpg,1,2,3\n")  # a torn row is skipped
    for path in (official, as_csv):
        table = read_celeba_landmarks(path)
        assert sorted(table) == ["000001.jpg", "000002.jpg"]
        assert table["000001.jpg"].shape == (5, 2)
        assert np.array_equal(table["000002.jpg"][4], [108, 153])
    table = read_celeba_landmarks(official)
    assert np.allclose(celeba_eyes(table, "000001.jpg", 178), [[69, 109], [106, 113]])
    # the half-size copies: pixel centres at integers in both frames
    assert np.allclose(celeba_eyes(table, "000001.jpg", 89), [[34.25, 54.25], [52.75, 56.25]])
    # an image the list does not cover: CelebA's average eye place
    assert np.allclose(celeba_eyes(table, "009999.jpg", 178), align.CELEBA_ALIGNED_EYES)


def test_refiner_training_crops_follow_each_images_own_eyes() -> None:
    """With hand-placed eyes a face that sits 5 px right and 3 px lower in its image is cut out
    at the same place on the face, with the same labels, as the face where it was."""
    from engine.tools.data import celeba_eyes
    from engine.tools.landmark_training import make_examples

    img = np.asarray(Image.open(RESOURCES / "astronaut.png").convert("RGB").resize((178, 218)))
    moved = np.zeros_like(img)
    moved[3:, 5:] = img[:-3, :-5]
    eyes = celeba_eyes(None, "", 178)
    x_ref, y_ref = make_examples([img], np.random.default_rng(2), 4, augment=False)
    x_own, y_own = make_examples([moved], np.random.default_rng(2), 4, augment=False, eyes_of=[eyes + [5, 3]])
    x_avg, _ = make_examples([moved], np.random.default_rng(2), 4, augment=False)
    assert np.array_equal(y_own, y_ref)
    inner = (slice(None), slice(None), slice(12, 52), slice(12, 52))  # away from the black border moved in
    # (not exactly equal: each crop's histogram is equalised, and the black edge moved in counts)
    assert np.abs(x_own[inner] - x_ref[inner]).mean() < 0.2 * np.abs(x_avg[inner] - x_ref[inner]).mean()


def test_refiner_training_uses_the_photos_the_landmark_list_covers(tmp_path) -> None:
    import json

    from engine.core.landmarks import load_refiner
    from engine.tools.landmark_training import LandmarkOptions, train_landmarks

    img = Image.open(RESOURCES / "astronaut.png").convert("RGB").resize((178, 218))
    data, names = _celeba_folder(tmp_path, img, 6, held_out=False)
    covered = names[:4]
    (data / "celeba" / "list_landmarks_align_celeba.txt").write_text(
        "4\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{n} 69 111 108 111 88 135 72 152 105 152\n" for n in covered))
    out = train_landmarks(LandmarkOptions(data=str(data), out=str(tmp_path / "model"), steps=2, batch=8, log=False))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert "4 images with their own hand-placed eyes" in meta["trained_on"]
    assert load_refiner(out) is not None
    # a list that covers none of the training photos is a clear error, not a silent fallback
    (data / "celeba" / "list_landmarks_align_celeba.txt").write_text("1\nnames\n999999.jpg 1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(ValueError, match="landmark list"):
        train_landmarks(LandmarkOptions(data=str(data), out=str(tmp_path / "model2"), steps=2, batch=8, log=False))
    # and a folder with no CelebA photos at all says how to lay the data out
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Training your own model"):
        train_landmarks(LandmarkOptions(data=str(tmp_path / "empty"), out=str(tmp_path / "m3"), steps=2, log=False))


def test_alignment_is_measured_against_hand_placed_eyes_when_the_data_folder_has_them(tmp_path) -> None:
    """npe eval --alignment on held-out CelebA: with the landmark list, each photo's own eyes are
    the truth (the astronaut, framed as CelebA would but with her eyes off its average place)."""
    from engine.tools.evaluate import alignment_metrics

    astronaut = Image.open(RESOURCES / "astronaut.png").convert("RGB")
    x0, width = 130, 209  # a 178:218 box around her face
    img = astronaut.crop((x0, 0, x0 + width, 256)).resize((178, 218), Image.BICUBIC)
    eyes = (ASTRONAUT_EYES - [x0, 0] + 0.5) * 178 / width - 0.5
    data, names = _celeba_folder(tmp_path, img, 3, held_out=True)
    average = alignment_metrics(data, refiner=None, n=3)
    (data / "celeba" / "list_landmarks_align_celeba.txt").write_text(
        "3\nnames\n" + "".join(f"{n} " + " ".join(f"{v:.2f}" for v in eyes.ravel()) + " 88 135 72 152 105 152\n"
                               for n in names))
    own = alignment_metrics(data, refiner=None, n=3)
    assert (average["truth"], own["truth"]) == ("average eye place", "hand-placed eyes")
    assert own["detected"] >= 2
    assert own["eye_error_cascade"]["median"] < 0.15  # type: ignore[index]
    assert average["eye_error_cascade"]["median"] > own["eye_error_cascade"]["median"] + 0.1  # type: ignore[index]
