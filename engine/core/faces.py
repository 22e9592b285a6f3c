"""Finding faces and their eyes in a photo, with the cascades that ship inside OpenCV.

``find_faces(pixels)`` returns every face it finds, best first, each with its eye centres
in photo coordinates. Tilted faces are found by also searching copies of the photo turned
by +-30 degrees; a face that fills the photo and runs off its edges is found in a copy
with a border around it. Eyes come from OpenCV's eye cascade inside the face when it finds a
plausible pair, otherwise from the face box's geometry (measured on aligned CelebA).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from engine.core import align

DETECT_MAX_SIDE = 960  # photos are searched at most this large
ANGLES = (0.0, -30.0, 30.0)
# the frontal-face cascades, in the order they are tried (the second only when the first finds
# no sure face: see find_faces)
FACE_CASCADES = ("haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt2.xml")
# Faces at least this fraction of the photo's short side are also searched for in a copy
# with a border of FRAME_BORDER times its long side (replicated edge pixels) around it.
# When no face that large (nor any with both eyes) is found, the surest face in that copy is taken, asking
# FRAMED_NEIGHBOURS agreeing windows of the cascade (5 in the plain search).
# That copy is shrunk until such a face is at most FRAMED_FACE_PX wide.
LARGE_FACE_FRACTION, FRAME_BORDER, FRAMED_NEIGHBOURS, FRAMED_FACE_PX = 0.4, 0.45, 3, 120
# Where the eyes sit in a frontal-face cascade box (fractions of the box side), measured
# on 600 aligned CelebA images: eye midpoint offset from the box centre, eye distance.
BOX_EYE_DX, BOX_EYE_DY, BOX_EYE_DIST = -0.009, -0.115, 0.374


@dataclass(frozen=True)
class Face:
    """A face in photo coordinates: its (upright) box corners, eye centres and the tilt."""

    eyes: np.ndarray  # (2, 2): viewer's left eye, right eye; (x, y) photo pixels
    box: np.ndarray  # (4, 2): the detection box's corners, possibly rotated
    score: float = 0.0
    eyes_found: bool = False  # True: from the eye cascade; False: from box geometry
    manual: bool = False

    def transform(self, size: int) -> np.ndarray:
        return align.eyes_to_crop(self.eyes, size)

    def to_dict(self, digits: int | None = 2) -> dict[str, object]:
        """As JSON: rounded for reading (``digits``), or exact (None, for session files: the
        alignment, and so the edited pixels, must come back the same)."""
        eyes, box = self.eyes, self.box
        if digits is not None:
            eyes, box = np.round(eyes, digits), np.round(box, digits)
        return {"eyes": eyes.tolist(), "box": box.tolist(), "score": round(float(self.score), 3),
                "eyes_found": self.eyes_found, "manual": self.manual}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Face:
        return cls(eyes=np.asarray(d["eyes"], dtype=np.float64), box=np.asarray(d["box"], dtype=np.float64),
                   score=float(d.get("score", 0.0)), eyes_found=bool(d.get("eyes_found", False)),  # type: ignore[arg-type]
                   manual=bool(d.get("manual", False)))


_cascades: dict[str, cv2.CascadeClassifier] = {}


def _cascade(name: str) -> cv2.CascadeClassifier:
    if name not in _cascades:
        c = cv2.CascadeClassifier(cv2.data.haarcascades + name)  # type: ignore[attr-defined]
        if c.empty():
            raise RuntimeError(f"OpenCV's {name} is missing from the installed opencv-python-headless")
        _cascades[name] = c
    return _cascades[name]


def _gray(pixels: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    return cv2.equalizeHist(g)


def face_from_box(cx: float, cy: float, side: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Eye estimates and box corners for an upright-frame box turned by ``angle_deg``."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    mid = np.array([BOX_EYE_DX, BOX_EYE_DY]) * side
    half = BOX_EYE_DIST * side / 2
    eyes = np.array([mid + [-half, 0], mid + [half, 0]]) @ rot.T + [cx, cy]
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * side / 2 @ rot.T + [cx, cy]
    return eyes, corners


def _eyes_in_face(gray: np.ndarray, x: int, y: int, w: int) -> np.ndarray | None:
    """The most plausible eye pair inside an upright face box, or None."""
    top = gray[y + int(0.15 * w): y + int(0.6 * w), x: x + w]
    if top.size == 0:
        return None
    min_eye = max(6, int(0.12 * w))
    found = _cascade("haarcascade_eye.xml").detectMultiScale(top, 1.1, 4, minSize=(min_eye, min_eye),
                                                              maxSize=(int(0.45 * w), int(0.45 * w)))
    if len(found) < 2:
        return None
    centres = np.array([(ex + ew / 2 + x, ey + eh / 2 + y + int(0.15 * w)) for ex, ey, ew, eh in found])
    expect_mid = np.array([x + w / 2 + BOX_EYE_DX * w, y + w / 2 + BOX_EYE_DY * w])
    best, best_cost = None, np.inf
    for i in range(len(centres)):
        for j in range(len(centres)):
            left, right = centres[i], centres[j]
            d = right - left
            dist = np.hypot(*d)
            if d[0] <= 0 or not 0.25 * w < dist < 0.5 * w or abs(d[1]) > 0.15 * w:
                continue
            mid = (left + right) / 2
            cost = np.hypot(*(mid - expect_mid)) / w + abs(dist / w - BOX_EYE_DIST)
            if cost < best_cost:
                best, best_cost = np.array([left, right]), cost
    return best if best_cost < 0.2 else None


def _rotate(gray: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Turn the image by ``angle`` degrees on an enlarged canvas; returns it and the map back."""
    h, w = gray.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos), int(h * cos + w * sin)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    out = cv2.warpAffine(gray, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, align.invert(m)


def _candidates(gray: np.ndarray, min_side: int, offset: float = 0.0, neighbours: int = 5,
                cascade: str = FACE_CASCADES[0]) -> list[Face]:
    """Every cascade detection in ``gray`` (upright and turned copies) at least ``min_side``
    pixels wide, with its eyes, moved by ``-offset`` (the width of a border added around it)."""
    cands: list[Face] = []
    for angle in ANGLES:
        img, back = (gray, None) if angle == 0 else _rotate(gray, angle)
        rects, _, weights = _cascade(cascade).detectMultiScale3(
            img, 1.1, neighbours, minSize=(min_side, min_side), outputRejectLevels=True)
        for (x, y, s, _), wgt in zip(rects, np.ravel(weights) if len(rects) else [], strict=False):
            # in the turned copy the face is upright: work there, then map back
            est_eyes, corners = face_from_box(x + s / 2, y + s / 2, float(s), 0.0)
            eyes = _eyes_in_face(img, int(x), int(y), int(s))
            found = eyes is not None
            e = eyes if eyes is not None else est_eyes
            if back is not None:
                e, corners = align.apply(back, e), align.apply(back, corners)
            cands.append(Face(eyes=e - offset, box=corners - offset, score=float(wgt), eyes_found=found))
    return cands


def find_faces(pixels: np.ndarray, min_face_fraction: float = 0.06) -> list[Face]:
    """All faces in an RGB photo, largest-and-surest first."""
    scale = min(1.0, DETECT_MAX_SIDE / max(pixels.shape[:2]))
    gray = _gray(_shrunk(pixels, scale))
    short = min(gray.shape[:2])
    # A face that fills the frame (a selfie, a portrait cut at the chin) runs off the photo's
    # edges, where the cascade's window cannot reach. When no large face was found, nor any
    # face with both eyes (a sure one: the photo is not a close-up), look for one in a copy
    # with a border: only large windows, so it costs little, and only the surest (a photo
    # that one face fills holds no other large face; the border's smeared edge pixels
    # sometimes pass for one).
    # When even that finds none, the second cascade (trained on other faces) searches the same
    # two ways: with the first alone, 7 of 667 All-Age-Faces photos (faces filling the frame,
    # fringes down to the glasses) had no face found.
    large = max(20, int(LARGE_FACE_FRACTION * short))
    cands: list[Face] = []

    def sure() -> bool:
        return any(_side(f) >= large or f.eyes_found for f in cands)

    for cascade in FACE_CASCADES:
        cands += _candidates(gray, max(20, int(min_face_fraction * short)), cascade=cascade)
        if sure():
            break
        shrink = min(1.0, FRAMED_FACE_PX / large)  # large faces need no more pixels than this
        reduced = _shrunk(gray, shrink)
        pad = int(FRAME_BORDER * max(reduced.shape[:2]))
        framed = cv2.copyMakeBorder(reduced, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        best = sorted(_candidates(framed, round(large * shrink), offset=pad, neighbours=FRAMED_NEIGHBOURS,
                                  cascade=cascade), key=_sureness, reverse=True)[:1]
        cands += [replace(f, eyes=f.eyes / shrink, box=f.box / shrink) for f in best]
        if sure():
            break
    # one face may be found at several angles and in both searches: keep the surest
    cands.sort(key=_sureness, reverse=True)
    faces: list[Face] = []
    for f in cands:
        c, side = f.box.mean(0), _side(f)
        if all(np.hypot(*(c - k.box.mean(0))) > 0.5 * max(side, _side(k)) for k in faces):
            faces.append(replace(f, eyes=f.eyes / scale, box=f.box / scale))
    faces.sort(key=lambda f: _side(f) * (1.0 + 0.1 * f.score), reverse=True)
    return faces


def _shrunk(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` when it is below 1 (area averaging), else itself."""
    if factor >= 1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def _sureness(face: Face) -> tuple[bool, float]:
    return face.eyes_found, face.score


def _side(face: Face) -> float:
    return float(np.hypot(*(face.box[1] - face.box[0])))


def face_from_rect(x0: float, y0: float, x1: float, y1: float) -> Face:
    """A face placed by hand: the user's box is read like a detection box."""
    side = max(x1 - x0, y1 - y0)
    eyes, corners = face_from_box((x0 + x1) / 2, (y0 + y1) / 2, side, 0.0)
    return Face(eyes=eyes, box=corners, manual=True)


def whole_image_face(width: int, height: int) -> Face:
    """The fallback for an image that is already a face crop: read it as framed like the template."""
    side = min(width, height)
    ox, oy = (width - side) / 2, (height - side) / 2
    eyes = align.TEMPLATE_EYES * side + [ox - 0.5, oy - 0.5]
    box = np.array([[ox, oy], [ox + side, oy], [ox + side, oy + side], [ox, oy + side]], dtype=np.float64)
    return Face(eyes=eyes, box=box, manual=True)


def locate_eyes(pixels: np.ndarray) -> np.ndarray | None:
    """Eye centres of the most prominent face, or None (used to align training sets)."""
    faces = find_faces(pixels)
    return faces[0].eyes if faces else None
