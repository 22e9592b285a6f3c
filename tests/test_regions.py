"""The region map: edits stay on the person, hair colours stay in the hair."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from engine.core.attributes import Attribute, AttributeSet
from engine.core.faces import whole_image_face
from engine.core.images import Photo
from engine.core.regions import HAIR_SLIDERS, Regions, find_regions
from engine.core.session import EditSession

SIZE = 256
BACKGROUND = (40, 90, 200)
SKIN = (225, 172, 140)
HAIR = (70, 45, 30)
SHIRT = (30, 140, 60)


def drawn_portrait(size: int = SIZE) -> np.ndarray:
    """A portrait framed like the template: a blue background, a dark hair cap, a skin-coloured
    face with darker eyes and mouth, a green shirt. Noise gives GrabCut colour spreads."""
    ys, xs = np.mgrid[0:size, 0:size]
    u, v = (xs + 0.5) / size, (ys + 0.5) / size
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    img[((u - 0.5) / 0.34) ** 2 + ((v - 0.45) / 0.4) ** 2 < 1] = HAIR
    img[((u - 0.5) / 0.22) ** 2 + ((v - 0.6) / 0.28) ** 2 < 1] = SKIN
    for cx in (0.37, 0.63):
        img[((u - cx) / 0.04) ** 2 + ((v - 0.48) / 0.02) ** 2 < 1] = (60, 40, 40)
    img[(np.abs(u - 0.5) < 0.08) & (np.abs(v - 0.77) < 0.015)] = (150, 60, 60)
    img[(v > 0.9) & (np.abs(u - 0.5) < 0.4)] = SHIRT
    img += np.random.default_rng(0).normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _template_mean(m: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> float:
    r = m.shape[0]
    return float(m[int(v0 * r):int(v1 * r), int(u0 * r):int(u1 * r)].mean())


def test_the_maps_find_the_person_the_hair_and_the_background() -> None:
    pixels = drawn_portrait()
    face = whole_image_face(SIZE, SIZE)
    regions = find_regions(pixels, face.transform(64), 64)
    assert regions.person.shape == regions.hair.shape == (64, 64)
    for m in (regions.person, regions.hair):
        assert m.dtype == np.float32
        assert 0 <= m.min() <= m.max() <= 1
    # background beside the head (both sides) and in the top corners
    assert _template_mean(regions.person, 0.0, 0.1, 0.2, 0.6) < 0.05
    assert _template_mean(regions.person, 0.9, 1.0, 0.2, 0.6) < 0.05
    assert _template_mean(regions.person, 0.0, 0.12, 0.0, 0.08) < 0.05
    # the face, the hair above it and the shirt are the person
    assert _template_mean(regions.person, 0.4, 0.6, 0.5, 0.7) > 0.95
    assert _template_mean(regions.person, 0.4, 0.6, 0.1, 0.2) > 0.95
    assert _template_mean(regions.person, 0.3, 0.7, 0.93, 1.0) > 0.9
    # the hair map keeps the hair and leaves the face's skin and the shirt
    assert _template_mean(regions.hair, 0.4, 0.6, 0.1, 0.2) > 0.9
    assert _template_mean(regions.hair, 0.35, 0.65, 0.55, 0.7) < 0.05
    assert _template_mean(regions.hair, 0.3, 0.7, 0.95, 1.0) < 0.1
    # the skin map is the face, not the hair, the shirt or the background
    assert _template_mean(regions.skin, 0.35, 0.65, 0.55, 0.7) > 0.9
    assert _template_mean(regions.skin, 0.4, 0.6, 0.1, 0.2) < 0.1
    assert _template_mean(regions.skin, 0.3, 0.7, 0.95, 1.0) < 0.1
    assert _template_mean(regions.skin, 0.0, 0.1, 0.2, 0.6) < 0.05
    assert _template_mean(regions.skin, 0.45, 0.55, 0.75, 0.78) < 0.05  # nor the lips
    # the crown's band: the hair above the forehead, not the mouth
    assert _template_mean(regions.crown, 0.4, 0.6, 0.1, 0.2) > 0.9
    assert _template_mean(regions.crown, 0.4, 0.6, 0.72, 0.86) < 0.05
    # the jaw's band: the mouth and chin, not the eyes
    assert _template_mean(regions.jaw, 0.4, 0.6, 0.72, 0.86) > 0.9
    assert _template_mean(regions.jaw, 0.3, 0.7, 0.45, 0.51) < 0.05
    # the face's band: the eyes, the cheeks, the mouth and the chin, not the hair or the shirt
    assert _template_mean(regions.face, 0.3, 0.7, 0.45, 0.51) > 0.9
    assert _template_mean(regions.face, 0.4, 0.6, 0.55, 0.8) > 0.9
    assert _template_mean(regions.face, 0.4, 0.6, 0.1, 0.2) < 0.05
    assert _template_mean(regions.face, 0.3, 0.7, 0.95, 1.0) < 0.05
    # the eyes' band: over the eyes, not the mouth or the hair above the forehead
    assert _template_mean(regions.eyes, 0.3, 0.7, 0.45, 0.51) > 0.9
    assert _template_mean(regions.eyes, 0.4, 0.6, 0.72, 0.8) < 0.05
    assert _template_mean(regions.eyes, 0.4, 0.6, 0.1, 0.2) < 0.05


def test_a_flat_photo_gets_maps_without_an_error() -> None:
    pixels = np.full((100, 100, 3), 128, np.uint8)
    regions = find_regions(pixels, whole_image_face(100, 100).transform(64), 64)
    assert np.isfinite(regions.person).all()
    assert np.isfinite(regions.hair).all()
    assert np.isfinite(regions.strands).all()
    assert np.isfinite(regions.skin).all()
    assert np.isfinite(regions.eyes).all()
    assert np.isfinite(regions.jaw).all()
    assert np.isfinite(regions.crown).all()
    assert np.isfinite(regions.face).all()


def test_hair_sliders_are_limited_to_the_hair_and_others_to_the_person() -> None:
    person = np.zeros((4, 4), np.float32)
    hair = np.ones((4, 4), np.float32)
    skin = np.full((4, 4), 0.5, np.float32)
    eyes = np.full((4, 4), 0.25, np.float32)
    jaw = np.full((4, 4), 0.75, np.float32)
    crown = np.full((4, 4), 0.125, np.float32)
    face = np.full((4, 4), 0.625, np.float32)
    r = Regions(person, hair, hair, skin, eyes, jaw, crown, face)
    assert r.for_sliders({"blond_hair"}) is hair
    assert r.for_sliders({"blond_hair", "gray_hair"}) is hair
    assert r.for_sliders({"blond_hair", "smiling"}) is person
    assert r.for_sliders({"pc1"}) is person
    assert r.for_sliders({"pale_skin"}) is skin
    assert r.for_sliders({"pale_skin", "black_hair"}) is person
    assert r.for_sliders({"eyeglasses"}) is eyes
    assert r.for_sliders({"eyeglasses", "smiling"}) is person
    assert r.for_sliders({"beard", "mustache"}) is jaw
    assert r.for_sliders({"beard", "eyeglasses"}) is person
    assert r.for_sliders({"bangs"}) is crown
    assert r.for_sliders({"bangs", "black_hair"}) is person
    assert r.for_sliders({"smiling", "mouth_open"}) is face
    assert r.for_sliders({"smiling", "eyeglasses"}) is person
    assert {"black_hair", "blond_hair", "brown_hair", "gray_hair"} <= HAIR_SLIDERS
    assert "bangs" not in HAIR_SLIDERS  # a fringe covers skin: it may not be kept off it


def strand_portrait() -> np.ndarray:
    """The drawn portrait with strands combed into the left half of its hair above the face; the
    right half is smoother than the cheeks (a forehead lit unlike them, in the hair's colour)."""

    img = drawn_portrait().astype(np.float32)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    u, v = (xs + 0.5) / SIZE, (ys + 0.5) / SIZE
    left = (u > 0.2) & (u < 0.48) & (v > 0.08) & (v < 0.3)
    img[left] += (40 * np.sin(xs * 1.3 + 0.2 * ys))[left][:, None]
    right = (u > 0.52) & (u < 0.8) & (v > 0.08) & (v < 0.3)
    img[right] = cv2.GaussianBlur(img, (0, 0), 1.5)[right]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_only_hair_with_fine_detail_of_its_own_counts_as_strands() -> None:
    regions = find_regions(strand_portrait(), whole_image_face(SIZE, SIZE).transform(64), 64)
    assert regions.strands.shape == (64, 64)
    assert regions.strands.dtype == np.float32
    assert (regions.strands <= regions.hair + 1e-6).all()
    # both sides above the face are hair by their colour
    assert _template_mean(regions.hair, 0.25, 0.42, 0.12, 0.25) > 0.7
    assert _template_mean(regions.hair, 0.55, 0.68, 0.12, 0.25) > 0.7
    # only the combed side has strands to keep
    assert _template_mean(regions.strands, 0.25, 0.42, 0.12, 0.25) > 0.7
    assert _template_mean(regions.strands, 0.55, 0.68, 0.12, 0.25) < 0.1


def forehead_portrait(strands: bool) -> np.ndarray:
    """The drawn portrait with its forehead lit brighter and redder than its cheeks, smooth, or
    under a fringe in the hair's colour, combed."""
    img = drawn_portrait().astype(np.float32)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    u, v = (xs + 0.5) / SIZE, (ys + 0.5) / SIZE
    band = ((np.abs(u - 0.5) < 0.17) & (v > 0.28) & (v < 0.43)).astype(np.float32)
    if strands:
        img[band > 0] = np.array(HAIR, np.float32) + (40 * np.sin(xs * 1.3 + 0.2 * ys))[band > 0][:, None]
    else:  # skin that the light makes paler and pinker than the cheeks, fading in as light does
        lit = np.array(SKIN, np.float32) + np.array([28.0, 30.0, 45.0])
        w = cv2.GaussianBlur(band, (0, 0), 4)[..., None]
        grain = np.random.default_rng(1).normal(0, 3, img.shape).astype(np.float32)
        img = (1 - w) * img + w * (lit + grain)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_forehead_lit_unlike_the_cheeks_is_skin_and_a_fringe_over_it_is_hair() -> None:
    t = whole_image_face(SIZE, SIZE).transform(64)
    bare = find_regions(forehead_portrait(strands=False), t, 64)
    assert _template_mean(bare.hair, 0.42, 0.58, 0.33, 0.38) < 0.2  # a hair colour leaves it
    assert _template_mean(bare.hair, 0.4, 0.6, 0.1, 0.2) > 0.9  # the hair above stays hair
    fringe = find_regions(forehead_portrait(strands=True), t, 64)
    assert _template_mean(fringe.hair, 0.42, 0.58, 0.33, 0.38) > 0.7


def test_a_stroke_grows_hair_except_where_the_photo_has_strands_of_its_own(engine, monkeypatch) -> None:
    import engine.core.session as session_module

    kept: list[np.ndarray] = []
    real = session_module.growth_map

    def spy(before: np.ndarray, after: np.ndarray, brushed: np.ndarray, hair: np.ndarray) -> np.ndarray:
        kept.append(hair)
        return real(before, after, brushed, hair)

    monkeypatch.setattr(session_module, "growth_map", spy)
    s = EditSession(engine.loaded, Photo(strand_portrait(), "portrait.png"), whole_image_face(SIZE, SIZE), "cpu")
    s.paint((30, 20, 15), 0.08 * SIZE, [(0.25 * SIZE, 0.18 * SIZE), (0.75 * SIZE, 0.18 * SIZE)])
    s.growth()
    assert len(kept) == 1
    # what keeps its own hair is the strands map (the smooth side, hair by colour, may grow)
    assert np.array_equal(kept[0], s.regions.strands)
    assert not np.array_equal(kept[0], s.regions.hair)


def _photo_region(session: EditSession, names: set[str]) -> np.ndarray:
    """The session's region for these sliders, mapped onto the (crop-sized) photo."""
    m = session.regions.for_sliders(names)
    return np.kron(m, np.ones((SIZE // m.shape[0],) * 2, np.float32))


def test_a_hair_slider_leaves_the_background_and_the_face_as_they_were(engine) -> None:
    g = torch.Generator().manual_seed(5)
    dirs = torch.randn(2, engine.loaded.config.latent_dim, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    attributes = AttributeSet([Attribute("blond_hair", "Blond hair", 30.0),
                               Attribute("smiling", "Smiling", 30.0)], dirs)
    photo = Photo(drawn_portrait(), "portrait.png")
    s = EditSession(engine.loaded, photo, whole_image_face(SIZE, SIZE), "cpu", attributes)
    for names in ({"blond_hair"}, {"smiling"}):
        s.set_sliders({n: 2.0 for n in names})
        edited = s.composite()
        changed = np.abs(edited.astype(int) - photo.pixels.astype(int)).max(axis=2)
        region = _photo_region(s, names)
        assert changed[region > 0.5].mean() > 1.0  # the slider does something where it may
        assert changed[region == 0].max() <= 1  # and nothing elsewhere (resampling: at most 1)
        # background beside the head: untouched by both
        assert changed[int(0.25 * SIZE):int(0.55 * SIZE), :int(0.08 * SIZE)].max() <= 1
    s.set_sliders({"blond_hair": 2.0})
    changed = np.abs(s.composite().astype(int) - photo.pixels.astype(int)).max(axis=2)
    assert changed[int(0.55 * SIZE):int(0.7 * SIZE), int(0.4 * SIZE):int(0.6 * SIZE)].max() <= 1  # cheeks


def _one_slider_change(engine, name: str, seed: int) -> np.ndarray:
    """(SIZE, SIZE): how much (0..255, the largest channel) one slider at +2 changes the drawn
    portrait, the slider a random direction of a large step."""
    d = torch.randn(1, engine.loaded.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    photo = Photo(drawn_portrait(), "portrait.png")
    s = EditSession(engine.loaded, photo, whole_image_face(SIZE, SIZE), "cpu",
                    AttributeSet([Attribute(name, name, 30.0)], d / d.norm()))
    s.set_sliders({name: 2.0})
    return np.abs(s.composite().astype(int) - photo.pixels.astype(int)).max(axis=2)


def _part(changed: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return changed[int(v0 * SIZE):int(v1 * SIZE), int(u0 * SIZE):int(u1 * SIZE)]


def test_pale_skin_changes_the_face_and_leaves_the_hair_and_the_lips(engine) -> None:
    changed = _one_slider_change(engine, "pale_skin", 6)
    cheeks = _part(changed, 0.4, 0.6, 0.55, 0.7).mean()
    assert cheeks > 1.0
    assert _part(changed, 0.45, 0.55, 0.75, 0.78).mean() < 0.1 * cheeks  # the lips keep their colour (a blurred trace)
    assert _part(changed, 0.4, 0.6, 0.1, 0.2).max() <= 1  # hair above
    assert _part(changed, 0.3, 0.7, 0.93, 1.0).max() <= 1  # the shirt


def test_the_same_photo_gives_the_same_maps() -> None:
    """Reopening a session must give the same pixels: GrabCut's random start is seeded."""
    import cv2

    pixels = drawn_portrait()
    t = whole_image_face(SIZE, SIZE).transform(64)
    first = find_regions(pixels, t, 64)
    cv2.setRNGSeed(12345)
    cv2.randu(np.empty((10, 10), np.float32), 0, 1)  # move OpenCV's random state on
    again = find_regions(pixels, t, 64)
    assert np.array_equal(first.person, again.person)
    assert np.array_equal(first.hair, again.hair)


def test_eyeglasses_change_the_eyes_and_leave_the_mouth_and_the_hair(engine) -> None:
    changed = _one_slider_change(engine, "eyeglasses", 7)
    eyes = _part(changed, 0.3, 0.7, 0.45, 0.51).mean()
    assert eyes > 1.0
    # the band's soft edge reaches the mouth by a trace only
    assert _part(changed, 0.4, 0.6, 0.74, 0.8).mean() < 0.05 * eyes
    assert _part(changed, 0.4, 0.6, 0.1, 0.2).max() <= 1  # hair above


def test_a_beard_changes_the_chin_and_leaves_the_eyes(engine) -> None:
    changed = _one_slider_change(engine, "beard", 8)
    chin = _part(changed, 0.4, 0.6, 0.74, 0.86).mean()
    assert chin > 1.0
    assert _part(changed, 0.3, 0.7, 0.45, 0.51).mean() < 0.05 * chin  # the eyes
    assert _part(changed, 0.4, 0.6, 0.1, 0.2).max() <= 1  # hair above


def test_a_fringe_changes_the_top_of_the_head_and_leaves_the_mouth(engine) -> None:
    changed = _one_slider_change(engine, "bangs", 9)
    top = _part(changed, 0.4, 0.6, 0.1, 0.3).mean()
    assert top > 1.0
    assert _part(changed, 0.4, 0.6, 0.74, 0.86).mean() < 0.05 * top  # the mouth and chin


def test_a_smile_changes_the_face_and_leaves_the_hair_and_the_shirt(engine) -> None:
    changed = _one_slider_change(engine, "smiling", 10)
    mouth = _part(changed, 0.4, 0.6, 0.68, 0.8).mean()
    assert mouth > 1.0
    assert _part(changed, 0.3, 0.7, 0.45, 0.51).mean() > 0.5 * mouth  # the eyes smile too
    assert _part(changed, 0.4, 0.6, 0.1, 0.2).max() <= 1  # hair above
    assert _part(changed, 0.3, 0.7, 0.95, 1.0).mean() < 0.05 * mouth  # the shirt: the band's soft edge, a trace
