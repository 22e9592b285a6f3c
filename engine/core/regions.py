"""Where the person, their hair and their skin are in a face's crop, so an edit stays on them.

A slider's change comes from the whole decoded crop: a hair colour also moves the
background a little, and the face's skin. The region map limits it. It is computed from
the photo itself, with no model: the canonical framing says where the face, the hair above
the forehead and the background beside the head are likely to be; GrabCut (Rother et al.,
SIGGRAPH 2004) grows those seeds by colour into a person / background split; a colour model
of the cheeks says which of the person's pixels are skin. Clothes are the person's pixels
below the jaw. The hair with strands of its own (``strands``) is the hair map where the photo
has fine detail beyond the cheeks': a stroke grows new hair elsewhere (engine.core.detail).
Sliders about one part keep to it: hair colours to the hair, pale skin to the skin, eyeglasses
to a band over the eyes, a moustache and a beard to the lower face, a fringe and baldness to the
top of the head (``Regions.for_sliders``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from engine.core import align

# The maps are found on a crop this large (GrabCut needs more pixels than a 64-px crop has)
# and resized to the session's crop.
REGION_SIZE = 128
GRABCUT_ROUNDS = 4
# Edges are softened over this share of the crop, so a limited edit has no visible border.
SOFTEN = 0.025
# Sliders about the hair alone: their change is kept off the face's skin and the clothes.
HAIR_SLIDERS = frozenset({"black_hair", "blond_hair", "brown_hair", "gray_hair", "wavy_hair"})
# Sliders about the skin alone: their change is kept off the hair and the clothes, and off the
# lips (centre x, y; radii x, y as crop fractions, at the template's mouth), which keep their colour.
SKIN_SLIDERS = frozenset({"pale_skin"})
LIPS = (0.5, 0.765, 0.1, 0.045)
# Sliders about the eyes alone (glasses): their change is kept to a band over the eyes, the brows
# and the bridge of the nose, out to the temples (centre x, y; radii x, y as crop fractions).
EYE_SLIDERS = frozenset({"eyeglasses"})
EYE_BAND = (0.5, 0.48, 0.4, 0.15)
# Sliders about the jaw alone (facial hair): kept to the lower face, from the upper lip and the
# lower cheeks down over the chin and the jaw (the chin sits at about 0.86).
JAW_SLIDERS = frozenset({"mustache", "beard"})
JAW_BAND = (0.5, 0.8, 0.34, 0.2)
# Sliders about the top of the head (a fringe, baldness): kept to the person above the eyes, the
# hair and the forehead down to the brows.
CROWN_SLIDERS = frozenset({"bangs", "bald"})
CROWN_BAND = (0.5, 0.18, 0.5, 0.27)
# Sliders about the face's expression and make-up: kept to the face from the brows to the chin,
# cheeks and eyes included, less the hair that falls beside it (a smile moved the hair 6/255).
# Within FACE_CORE (the eyes, the nose, the mouth) nothing counts as hair: dark eyes and brows
# have the hair's colour.
FACE_SLIDERS = frozenset({"smiling", "mouth_open", "heavy_makeup"})
FACE_BAND = (0.5, 0.6, 0.3, 0.28)
FACE_CORE = (0.5, 0.6, 0.22, 0.26)
# The head with its hair in the canonical framing (centre x, y; radii x, y as crop fractions).
HEAD_OUTLINE = (0.5, 0.45, 0.36, 0.42)
# The middle of the forehead, above the brows (centre x, y; radii x, y as crop fractions).
FOREHEAD = (0.5, 0.35, 0.08, 0.03)
# Fine detail (local mean |Laplacian|, over this share of the crop) against the cheeks': up to
# SMOOTH times theirs is skin's, from STRANDS times hair's.
FINE_SPAN = 0.025
SMOOTH = 1.0
STRANDS = 1.5


@dataclass(frozen=True)
class Regions:
    """Soft maps (R, R) float32 in [0, 1] over a face's crop."""

    person: np.ndarray  # head, hair, neck and clothes: everything but the background
    hair: np.ndarray  # the person less their skin and their clothes
    # the hair that shows strands of its own: the hair map where the photo has more fine detail
    # than the cheeks (a smooth forehead the colours took for hair has none to keep)
    strands: np.ndarray
    # the person's skin: the cheeks' colour (and the face itself), not the hair's
    skin: np.ndarray
    eyes: np.ndarray  # the person within EYE_BAND
    jaw: np.ndarray  # the person within JAW_BAND
    crown: np.ndarray  # the person within CROWN_BAND
    face: np.ndarray  # the person within FACE_BAND, less the hair beside FACE_CORE

    def resized(self, size: int) -> Regions:
        if self.person.shape[0] == size:
            return self
        def fit(m: np.ndarray) -> np.ndarray:
            return cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA if size < m.shape[0] else cv2.INTER_LINEAR)
        return Regions(fit(self.person), fit(self.hair), fit(self.strands), fit(self.skin), fit(self.eyes),
                       fit(self.jaw), fit(self.crown), fit(self.face))

    def for_sliders(self, names: Iterable[str]) -> np.ndarray:
        """Where the change of these sliders may show: the hair when every one is about the
        hair, the skin, the eyes, the jaw, the crown or the face when every one is about them, the
        whole person otherwise."""
        names = set(names)
        parts = ((HAIR_SLIDERS, self.hair), (SKIN_SLIDERS, self.skin), (EYE_SLIDERS, self.eyes),
                 (JAW_SLIDERS, self.jaw), (CROWN_SLIDERS, self.crown), (FACE_SLIDERS, self.face))
        return next((part for group, part in parts if names and names <= group), self.person)


def _template_uv(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xs + 0.5) / size, (ys + 0.5) / size


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 < 1


def seeds(size: int) -> np.ndarray:
    """GrabCut's starting labels from the canonical framing (eyes at 0.48 of the height)."""
    u, v = _template_uv(size)
    m = np.full((size, size), cv2.GC_PR_BGD, np.uint8)
    m[_ellipse(u, v, *HEAD_OUTLINE)] = cv2.GC_PR_FGD  # the head with its hair, probably
    m[_ellipse(u, v, 0.5, 0.6, 0.17, 0.2)] = cv2.GC_FGD  # eyes, nose, mouth: surely the person
    m[(np.abs(u - 0.5) < 0.1) & (v > 0.85)] = cv2.GC_FGD  # the neck
    m[(np.abs(u - 0.5) < 0.12) & (v > 0.17) & (v < 0.3)] = cv2.GC_FGD  # above the forehead: hair, a bald head, a hat
    beside = ((u < 0.08) | (u > 0.92)) & (v < 0.6)
    above = (v < 0.03) & ((u < 0.25) | (u > 0.75))
    m[beside | above] = cv2.GC_BGD
    return m


def _soften(m: np.ndarray, spread: float = SOFTEN) -> np.ndarray:
    sigma = spread * m.shape[0]
    return cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma)


def _colour_distance(lab: np.ndarray, sample: np.ndarray, floor: float) -> np.ndarray | None:
    """(R, R) float32: each pixel's Mahalanobis distance (CIELAB) from a sample's colours, or None
    when the sample is too small. ``floor`` (Lab units, squared) keeps a flat sample from
    matching only itself."""
    if len(sample) < 8:
        return None
    cov = np.cov(sample.T) + np.eye(3) * floor
    d = lab.reshape(-1, 3) - sample.mean(0)
    return np.sqrt(np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)).reshape(lab.shape[:2]).astype(np.float32)


def _likeness(dist: np.ndarray) -> np.ndarray:
    """1 within one spread of the sample's mean, falling to 0 at three."""
    return np.clip((3.0 - dist) / 2.0, 0, 1)


def textured(crop: np.ndarray, cheeks: np.ndarray) -> np.ndarray:
    """(R, R) float32 in [0, 1]: where the crop has fine detail like hair's, by its local mean
    |Laplacian| against the cheeks' (``cheeks``: a bool mask of them): 0 up to SMOOTH times the
    cheeks', 1 from STRANDS times."""
    fine = np.abs(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))
    local = cv2.GaussianBlur(fine, (0, 0), FINE_SPAN * crop.shape[0])
    skin = max(float(fine[cheeks].mean()), 1.0)
    return np.clip((local / skin - SMOOTH) / (STRANDS - SMOOTH), 0, 1).astype(np.float32)


def find_regions(pixels: np.ndarray, transform: np.ndarray, size: int) -> Regions:
    """The region maps of the face whose crop of ``size`` pixels ``transform`` cuts from the
    photo ``pixels`` (H, W, 3 uint8). ``transform`` is the crop's own (photo -> ``size``)."""
    scale = REGION_SIZE / size
    t = np.asarray(transform, dtype=np.float64) * scale
    t[:, 2] += (scale - 1) / 2  # pixel centres: crop x' = (x + 0.5) * scale - 0.5
    crop = np.ascontiguousarray(align.warp_to_crop(pixels, t, REGION_SIZE)[..., :3])
    labels = seeds(REGION_SIZE)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut starts its colour models with k-means: the same photo must give the same maps
    try:
        cv2.grabCut(crop, labels, (0, 0, 1, 1), bgd, fgd, GRABCUT_ROUNDS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a flat crop (one colour) gives GrabCut nothing to model: keep the framing's guess
        pass
    u, v = _template_uv(REGION_SIZE)
    cut = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 0.5  # shading varies the skin's lightness more than its colour
    cheeks = (_ellipse(u, v, 0.38, 0.62, 0.06, 0.06) | _ellipse(u, v, 0.62, 0.62, 0.06, 0.06))
    top = (np.abs(u - 0.5) < 0.14) & (v > 0.08) & (v < 0.22) & cut  # above the forehead: the hair's colour
    d_skin = _colour_distance(lab, lab[cheeks], floor=16.0)
    d_hair = _colour_distance(lab, lab[top], floor=25.0)
    # A forehead is often lit unlike the cheeks (brighter, shinier, redder), and its colour then
    # matched neither: a hair colour tinted it. Where it is as smooth as skin (a fringe or a hat
    # brim has texture) and nearer the cheeks' colour than the hair's (a fair fringe is smooth
    # too), its own colour is skin as well.
    forehead = _ellipse(u, v, *FOREHEAD)
    d_forehead = _colour_distance(lab, lab[forehead], floor=16.0)
    texture = textured(crop, cheeks)
    if (d_skin is not None and d_forehead is not None and texture[forehead].mean() < 0.5
            and (d_hair is None or np.median(d_skin[forehead]) <= np.median(d_hair[forehead]))):
        d_skin = np.minimum(d_skin, d_forehead)
    # skin: the cheeks' colour, and closer to it than to the hair's (fair hair is near fair skin)
    skin = np.zeros(lab.shape[:2], np.float32)
    if d_skin is not None:
        skin = _likeness(d_skin) * (1.0 if d_hair is None else np.clip(0.5 + (d_hair - d_skin), 0, 1))
    skin = np.maximum(skin, _ellipse(u, v, 0.5, 0.62, 0.17, 0.2))
    like_hair = np.ones_like(skin) if d_hair is None else _likeness(d_hair)
    # GrabCut loses dark hair against a dark background: inside the head's outline, what has
    # the hair's colour is kept as well
    person = cut | (_ellipse(u, v, *HEAD_OUTLINE) & (like_hair > 0.5))
    hair = person * (1 - skin)
    # Below the jaw (the chin sits at about 0.86) the person is clothes, or hair falling onto
    # them: there only what has the hair's colour counts as hair.
    low = np.clip((v - 0.8) / 0.08, 0, 1)
    hair = hair * (1 - low * (1 - like_hair))
    hair = _soften(hair)

    def within(band: tuple[float, float, float, float]) -> np.ndarray:
        """The person within a band; its edges cross the cheeks, so they are softened more."""
        return _soften(person & _ellipse(u, v, *band), 2 * SOFTEN)

    hair_beside = hair * (1 - _soften(_ellipse(u, v, *FACE_CORE)))
    face = within(FACE_BAND) * (1 - hair_beside)
    skin_less_lips = _soften(person * skin) * (1 - _soften(_ellipse(u, v, *LIPS), SOFTEN / 2))
    return Regions(_soften(person.astype(np.float32)), hair, hair * texture, skin_less_lips, within(EYE_BAND),
                   within(JAW_BAND), within(CROWN_BAND), face).resized(size)
