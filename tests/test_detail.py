"""The hair detail pass: strands where a stroke grew hair over skin, nothing anywhere else."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from engine.core import align
from engine.core.checkpoint import ModelError
from engine.core.detail import DetailNet, HairDetail, band, growth_map, load_detail

SIZE = 64


def _astronaut_transform(photo: np.ndarray) -> np.ndarray:
    """A crop of the whole square photo (the template's eyes where the photo's would be)."""
    side = photo.shape[1]
    return align.eyes_to_crop(align.TEMPLATE_EYES * side - 0.5, SIZE)


def _forehead(size: int = SIZE) -> np.ndarray:
    """Hair grown over the forehead: crop rows 14..22 and columns 20..44 of 64."""
    growth = np.zeros((size, size), np.float32)
    growth[14 * size // 64:22 * size // 64, 20 * size // 64:44 * size // 64] = 1.0
    return growth


def _rendition(photo: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The face model's view of the crop: here, the crop itself."""
    return align.warp_to_crop(photo, t, SIZE)


def _net(seed: int = 0, zero: bool = False) -> DetailNet:
    torch.manual_seed(seed)
    net = DetailNet(8)
    with torch.no_grad():
        if zero:  # answers no detail at all
            net.out.weight.zero_()
            net.out.bias.zero_()
        else:
            net.out.weight.mul_(20.0)  # an untrained network's answer is faint; make it visible
    return net


def _laplacian(pixels: np.ndarray) -> np.ndarray:
    return np.abs(cv2.Laplacian(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))


def test_the_detail_never_changes_colour() -> None:
    d = torch.randn(1, 3, 32, 32)
    assert torch.allclose(band(d + 0.3), band(d), atol=1e-5)  # a colour cast added is taken out again


def test_strands_go_only_where_hair_grew(astronaut) -> None:
    t = _astronaut_transform(astronaut)
    hd = HairDetail(_net())
    nothing = np.zeros((SIZE, SIZE), np.float32)
    assert hd.apply(astronaut, nothing, t, _rendition(astronaut, t)) is astronaut  # nothing grew: nothing done
    out = hd.apply(astronaut, _forehead(), t, _rendition(astronaut, t))
    changed = np.abs(out.astype(np.int16) - astronaut.astype(np.int16)).max(axis=2) > 0
    # the forehead band, crop rows 14..22 and columns 20..44, is photo rows 112..176, columns 160..352
    assert changed[120:168, 170:340].mean() > 0.5
    far = np.ones_like(changed)
    far[100:190, 145:370] = False  # the band with the bilinear border around it
    assert not changed[far].any()
    again = hd.apply(astronaut, _forehead(), t, _rendition(astronaut, t))
    other = hd.apply(astronaut, _forehead(), t, _rendition(astronaut, t), seed=1)
    assert np.array_equal(out, again)  # the export is the preview
    assert not np.array_equal(out, other)


def test_the_photos_own_fine_detail_is_replaced_where_hair_grew(astronaut) -> None:
    """A network that answers no detail leaves the grown region smooth: the skin's pores are
    gone, its colour stays."""
    t = _astronaut_transform(astronaut)
    out = HairDetail(_net(zero=True)).apply(astronaut, _forehead(), t, _rendition(astronaut, t))
    inside = (slice(125, 165), slice(175, 335))
    assert _laplacian(out)[inside].mean() < 0.5 * _laplacian(astronaut)[inside].mean()
    assert np.abs(out[inside].mean((0, 1)) - astronaut[inside].mean((0, 1))).max() < 3


def test_a_large_photo_gets_detail_at_the_capped_scale(astronaut) -> None:
    big = cv2.resize(astronaut, (1400, 1400), interpolation=cv2.INTER_CUBIC)  # eyes 364 px apart: over twice CelebA's
    t = _astronaut_transform(big)
    hd = HairDetail(_net(), max_scale=2.0)
    _, scale = hd.frame(t, SIZE)
    assert scale > 2.0
    out = hd.apply(big, _forehead(), t, _rendition(big, t))
    changed = np.abs(out.astype(np.int16) - big.astype(np.int16)).max(axis=2) > 0
    assert changed[330:460, 470:930].mean() > 0.5
    assert not changed[700:].any()


def _crop(color: tuple[int, int, int]) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), color, np.uint8)


def test_growth_is_dark_paint_over_skin_away_from_eyes_and_lips() -> None:
    skin = _crop((200, 160, 140))
    after = skin.copy()
    after[8:40, :] = (60, 45, 35)  # forehead and eyes painted dark
    brushed = np.zeros((SIZE, SIZE), np.float32)
    brushed[8:40, :] = 1.0
    no_hair = np.zeros((SIZE, SIZE), np.float32)
    g = growth_map(skin, after, brushed, no_hair)
    assert g[12:20, 10:54].min() > 0.9  # the forehead grows hair
    assert g[30, 23] < 0.05  # the eyes stay paint
    assert g[30, 40] < 0.05
    assert g[38, 32] < 0.05  # and the nose
    assert g[48:].max() == 0  # not painted
    lighter = skin.copy()
    lighter[8:40, :] = (250, 230, 220)
    assert growth_map(skin, lighter, brushed, no_hair).max() == 0  # light paint grows nothing
    assert growth_map(skin, after, brushed, np.ones((SIZE, SIZE), np.float32)).max() == 0  # hair keeps its own
    assert growth_map(skin, after, np.zeros((SIZE, SIZE), np.float32), no_hair).max() == 0  # not the brush's


def test_a_detail_file_is_loaded_once_and_a_damaged_one_says_so(tmp_path) -> None:
    assert load_detail(tmp_path / "detail.safetensors") is None
    bad = tmp_path / "bad" / "detail.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a safetensors file")
    bad.with_suffix(".json").write_text(json.dumps({"width": 8}))
    with pytest.raises(ModelError, match="damaged"):
        load_detail(bad)


def test_strokes_grow_strands_in_the_export_and_sliders_never(engine, astronaut, monkeypatch) -> None:
    from engine.core.images import Photo
    from engine.core.pipeline import open_session

    engine.detail = HairDetail(_net())
    photo = Photo(astronaut.copy(), "astronaut")
    side = astronaut.shape[0]
    from engine.core.faces import Face

    eyes = align.TEMPLATE_EYES * side - 0.5
    face = Face(eyes=eyes, box=np.array([[0, 0], [side, 0], [side, side], [0, side]], float))
    session, _ = open_session(engine, photo, faces=[face])
    assert session.growth() is None
    session.set_sliders({"smiling": 1.0})
    assert session.growth() is None  # a slider recolours or reshapes: the photo's detail is right
    assert np.array_equal(session.composite(detail=True), session.composite())
    session.set_sliders({})
    session.paint((30, 20, 15), 0.1 * side, [(0.3 * side, 0.3 * side), (0.7 * side, 0.3 * side)])
    # a tiny random model's stroke darkens anything: the forehead is where hair grew
    forehead = _forehead(session.resolution)  # one map, as the session keeps its own while the edit stays
    monkeypatch.setattr(session, "growth", lambda: forehead)
    from engine.core.detail import StrandLayer

    bares: list[np.ndarray | None] = []
    real_put = StrandLayer.put
    def spy(self: StrandLayer, pic: np.ndarray, bare: np.ndarray | None = None) -> np.ndarray:
        bares.append(bare)
        return real_put(self, pic, bare)

    monkeypatch.setattr(StrandLayer, "put", spy)
    plain, grown = session.composite(), session.composite(detail=True)
    assert bares[-1] is session.photo.pixels  # the pores replaced are the photo's own, not the edit's edges
    changed = np.abs(grown.astype(np.int16) - plain.astype(np.int16)).max(axis=2) > 0
    assert changed[120:168, 170:340].mean() > 0.5
    assert not changed[300:].any()
    # a slider moved after the stroke keeps the strands (the network is not asked again)
    asked = []
    real_layer = engine.detail.layer
    monkeypatch.setattr(engine.detail, "layer", lambda *a, **k: asked.append(1) or real_layer(*a, **k))
    session.set_sliders({"smiling": 0.5})
    session.composite(detail=True)
    assert asked == []
    session.composite(astronaut[::2, ::2].copy(), 0.5, detail=True)  # another scale: strands made for it
    assert asked == [1]


def test_npe_detail_trains_and_resumes_and_its_weights_load(tmp_path, astronaut, tiny_model_dir) -> None:
    from PIL import Image

    from engine.tools.cli import main
    from engine.tools.detail_training import DetailOptions, train_detail
    from tests.test_faces import _celeba_folder

    aligned = Image.fromarray(astronaut).resize((178, 218))
    data, names = _celeba_folder(tmp_path, aligned, 3, held_out=False)
    rows = "".join(f"{n} {b} 1\n" for n, b in zip(names, (1, 1, -1), strict=True))
    (data / "celeba" / "list_attr_celeba.txt").write_text(f"3\nBangs Smiling\n{rows}")
    run = tmp_path / "run"
    assert main(["detail", "--data", str(data), "--out", str(run), "--steps", "2", "--batch", "2",
                 "--weights", str(tiny_model_dir)]) == 0
    assert json.loads((run / "state.json").read_text())["step"] == 2
    with np.load(run / "pairs.npz") as pairs:  # each photo beside the face model's rendition of it
        assert pairs["photos"].shape == pairs["renditions"].shape == (3, 90, 130, 3)
        assert pairs["bangs"].tolist() == [True, True, False]
        assert not np.array_equal(pairs["photos"], pairs["renditions"])
    train_detail(DetailOptions(data, run, steps=3, batch=2, resume=True, weights=str(tiny_model_dir)))
    assert json.loads((run / "state.json").read_text())["step"] == 3
    written = json.loads((run / "detail.json").read_text())
    assert (written["step"], written["face_model"]) == (3, "tiny-test")  # what it learned from, for the card
    assert "tiny-test's rendition" in written["data"]
    # pairs cached before the face model was kept with them: the card says it does not know which
    with np.load(run / "pairs.npz") as pairs:
        np.savez(run / "pairs.npz", **{k: pairs[k] for k in pairs.files if k != "face_model"})
    train_detail(DetailOptions(data, run, steps=4, batch=2, resume=True, weights=str(tiny_model_dir)))
    written = json.loads((run / "detail.json").read_text())
    assert written["face_model"] is None
    assert "a face model's rendition" in written["data"]
    hd = load_detail(run / "detail.safetensors")
    assert hd is not None
    assert hd.net(torch.zeros(1, 3, 16, 16), seed=0).shape == (1, 3, 16, 16)
    # a new run moved onto (here: the same) face model starts from those weights, not from scratch
    from safetensors.torch import load_file, save_file

    start = {k: v + 0.05 for k, v in load_file(str(run / "detail.safetensors")).items()}  # unlike a fresh net
    save_file(start, str(tmp_path / "start.safetensors"))
    (tmp_path / "start.json").write_text(json.dumps({"width": 24}))
    moved, fresh = tmp_path / "moved", tmp_path / "fresh"
    for out, init in ((moved, str(tmp_path / "start.safetensors")), (fresh, None)):
        train_detail(DetailOptions(data, out, steps=1, batch=2, lr=1e-6, weights=str(tiny_model_dir), init_from=init))
    after_moved = load_file(str(moved / "detail.safetensors"))
    after_fresh = load_file(str(fresh / "detail.safetensors"))
    assert max(float((after_moved[k] - start[k]).abs().max()) for k in start) < 1e-4
    assert max(float((after_fresh[k] - start[k]).abs().max()) for k in start) > 1e-2
    assert json.loads((moved / "detail.json").read_text())["init_from"] == str(tmp_path / "start.safetensors")
    train_detail(DetailOptions(data, moved, steps=2, batch=2, resume=True, weights=str(tiny_model_dir)))
    resumed = json.loads((moved / "detail.json").read_text())
    assert (resumed["step"], resumed["init_from"]) == (2, str(tmp_path / "start.safetensors"))  # still says so
    with pytest.raises(SystemExit, match="width 24, this run's is 8"):
        train_detail(DetailOptions(data, tmp_path / "narrow", steps=1, batch=2, width=8,
                                   weights=str(tiny_model_dir), init_from=str(run)))


def test_a_partial_growth_mixes_strands_and_pores_without_smoothing_them() -> None:
    """Where the growth is partial, the strands and the photo's own detail are mixed keeping
    their strength: a plain half-and-half mix of two unrelated textures would lose 30 % of it."""
    from engine.core.detail import StrandLayer

    rng = np.random.default_rng(0)
    picture = np.clip(128 + rng.normal(0, 12, (80, 80, 3)), 0, 255).astype(np.uint8)
    strands = rng.normal(0, 12, (80, 80, 3)).astype(np.float32)
    half = StrandLayer((0, 0, 80, 80), np.full((80, 80), 0.5, np.float32), strands, 1.0)
    mixed = half.put(picture)
    inner = (slice(10, 70), slice(10, 70))
    assert _laplacian(mixed)[inner].mean() > 0.9 * _laplacian(picture)[inner].mean()
    assert abs(float(mixed.mean()) - float(picture.mean())) < 1.0  # no change of colour
    none = StrandLayer((0, 0, 80, 80), np.zeros((80, 80), np.float32), strands, 1.0)
    assert np.array_equal(none.put(picture), picture)


def test_strands_replace_the_photos_pores_and_keep_the_edits_own_edge() -> None:
    """The fine detail replaced is the photo's own (its pores), not the sharp lower edge of the
    dark stroke that the edit drew: taking that away drew a pale line along it."""
    from engine.core.detail import StrandLayer

    rng = np.random.default_rng(0)
    bare = np.clip(190 + rng.normal(0, 8, (80, 80, 3)), 0, 255).astype(np.uint8)  # skin with pores
    edited = bare.astype(np.float32)
    edited[:40] -= 90  # a dark stroke over the top half, its lower edge sharp
    edited = np.clip(edited, 0, 255).astype(np.uint8)
    no_strands = StrandLayer((0, 0, 80, 80), np.ones((80, 80), np.float32), np.zeros((80, 80, 3), np.float32), 2.0)
    out = no_strands.put(edited, bare).astype(np.float32)
    # the pores are gone on both sides ...
    assert out[5:30, 5:75].std() < 0.5 * edited[5:30, 5:75].astype(np.float32).std()
    assert out[50:75, 5:75].std() < 0.5 * edited[50:75, 5:75].astype(np.float32).std()
    # ... and the stroke keeps its edge: no lighter line just inside it
    assert out[36:40].mean() < edited[36:40].astype(np.float32).mean() + 2
    # taking the edited picture's own fine detail instead lightens the stroke along its edge
    assert no_strands.put(edited).astype(np.float32)[36:40].mean() > edited[36:40].astype(np.float32).mean() + 10
