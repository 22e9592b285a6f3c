"""The edit session: strokes, undo, sliders, rendering into the full photo, session files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core import align
from engine.core.faces import face_from_rect, whole_image_face
from engine.core.images import Photo, load_photo
from engine.core.session import EditSession, StrokeMissedError


def _session(engine, photo_path: Path) -> EditSession:
    photo = load_photo(photo_path)
    return EditSession(engine.loaded, photo, whole_image_face(*photo.size), "cpu", engine.attributes)


def _paint(s: EditSession, color=(250, 250, 250), pts=((30, 30), (50, 35), (60, 40))) -> None:
    s.brush_begin(color, 6)
    for p in pts:
        s.brush_to([p])
    s.brush_end()


def test_a_stroke_moves_the_painted_region_toward_the_colour(engine, face_photo: Path) -> None:
    s = _session(engine, face_photo)
    target = np.array([0.9, -0.9, 0.9], np.float32)
    s.brush_begin((242, 13, 242), 8)
    pts = [(20 + i * 3, 40) for i in range(15)]
    s.brush_to(pts[:1])
    alpha = torch.from_numpy(s.stroke.alpha.copy())
    for p in pts[1:]:
        s.brush_to([p])
    alpha = torch.from_numpy(s.stroke.alpha.copy())
    s.brush_end()

    def err(z: torch.Tensor) -> float:
        with torch.no_grad():
            g = s.decoder(z)[0]
        t = torch.from_numpy(target).view(3, 1, 1)
        return float(((g - t) ** 2 * alpha).sum() / alpha.sum())

    assert err(s.z) < err(s.z0) * 0.995
    assert s.can_undo
    assert len(s.history) == 2


def test_undo_restores_exactly_and_redo_reapplies(engine, face_photo: Path) -> None:
    s = _session(engine, face_photo)
    before = s.composite().copy()
    _paint(s)
    edited = s.composite().copy()
    assert not np.array_equal(before, edited)
    assert s.undo()
    assert torch.equal(s.z, s.z0)
    assert np.array_equal(s.composite(), before)
    assert s.redo()
    assert np.array_equal(s.composite(), edited)
    assert not s.redo()


def test_untouched_photo_pixels_stay_identical(engine, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(4)
    big = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    p = tmp_path / "big.png"
    Image.fromarray(big).save(p)
    photo = load_photo(p)
    s = EditSession(engine.loaded, photo, face_from_rect(120, 60, 200, 140), "cpu", engine.attributes)
    assert np.array_equal(s.composite(), big)  # nothing edited: bit-identical
    _paint(s, pts=((150, 90), (170, 95)))
    out = s.composite()
    mask = s.render().mask[0, 0].numpy()
    changed = np.any(out != big, axis=2)
    assert changed.any()
    # everything outside the face crop's footprint is untouched
    x0, y0, x1, y1 = align.crop_to_photo_box(s.transform, s.resolution, big.shape)
    outside = np.ones_like(changed)
    outside[y0:y1, x0:x1] = False
    assert not changed[outside].any()
    assert (mask == 0).any() or changed.sum() < changed.size


def test_sliders_and_brush_combine(engine, face_photo: Path) -> None:
    s = _session(engine, face_photo)
    s.set_sliders({"smiling": 1.5})
    s.commit()
    z_slider = s.z.clone()
    _paint(s)
    assert s.sliders.as_dict() == {"smiling": 1.5}  # painting does not undo the slider
    assert not torch.equal(s.z, z_slider)
    offset = s.attributes.offset({"smiling": 1.5}).view(1, -1)
    assert torch.allclose(s.z - s.z_base, offset)
    # the shown crop is the brush's blend of G(z_base) plus the sliders' change, and stays
    # right after z_base moves (the cached G(z_base) is not reused for another latent)
    from engine.core.edit import render

    def expected() -> torch.Tensor:
        with torch.inference_mode():
            return render(s.x, s.recon0, s.decoder(s.z), s.mask_settings, s.decoder(s.z_base), s.slider_region(),
                          s.reach_tensor())[0]

    assert torch.equal(s.render().shown, expected())
    s.undo()
    assert torch.equal(s.z, z_slider)
    assert torch.equal(s.render().shown, expected())
    with pytest.raises(ValueError, match="unknown"):
        s.set_sliders({"nope": 1.0})


def _npe_files(path: Path) -> dict[str, bytes]:
    """The files inside a saved .npe session."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write_npe(files: dict[str, bytes], path: Path) -> None:
    """Write a .npe session from its files (as an older version would have written it)."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


def _crop_px(s: EditSession, x: float, y: float) -> tuple[int, int]:
    """The crop pixel (row, column) a photo point falls in."""
    cx, cy = s.photo_to_crop(x, y)
    return int(round(cy)), int(round(cx))


def test_a_stroke_changes_the_photo_only_near_it(engine, face_photo: Path) -> None:
    from engine.core.edit import halo_of

    s = _session(engine, face_photo)
    before = s.photo.pixels.copy()
    _paint(s, color=(20, 15, 10), pts=((10, 10), (20, 12)))  # top left; the brush radius is 6 photo pixels
    reach = s.reach
    assert reach is not None
    assert reach[_crop_px(s, 15, 11)] == 1.0  # on the stroke: in full
    far = reach == 0
    assert far[_crop_px(s, 90, 90)]  # the far corner, and most of the crop: nothing
    assert far.mean() > 0.5
    r = s.render()
    assert torch.equal(r.mask[0, 0][torch.from_numpy(far)], torch.zeros(int(far.sum())))
    out = s.composite()
    changed = np.abs(out.astype(np.int16) - before.astype(np.int16)).max(axis=2) > 0
    assert changed[:30, :30].any()
    assert not changed[70:, 70:].any()
    # the reach is the halo the brush was free to change (reach 1), fading over about one brush
    # radius beyond (here 2 crop pixels: at least 2 pixels)
    radius = 6 * align.scale_of(s.transform)
    full = torch.from_numpy((reach == 1).astype(np.float32))[None, None]
    assert not (reach > 0)[halo_of(full, max(1.5 * radius, 3))[0, 0].numpy() == 0].any()
    assert (reach > 0).sum() > (reach == 1).sum()  # it fades, not a hard edge
    # the tiny model's latent move changes the whole crop: without the limit it would all show
    s.reach = None
    s._render = None
    assert (s.render().mask[0, 0][torch.from_numpy(far)] > 0).any()


def test_undo_redo_and_the_latent_canvas_carry_the_reach(engine, face_photo: Path) -> None:
    s = _session(engine, face_photo)
    assert s.reach is not None
    assert not s.reach.any()
    _paint(s, pts=((10, 10), (20, 12)))
    first = s.reach.copy()
    _paint(s, pts=((80, 80), (85, 85)))
    assert s.reach[_crop_px(s, 82, 82)] == 1.0
    assert s.reach[_crop_px(s, 15, 11)] == 1.0
    s.undo()
    assert np.array_equal(s.reach, first)
    s.redo()
    assert s.reach[_crop_px(s, 82, 82)] == 1.0
    s.set_latent(s.z[0].numpy() * 0.5)  # the latent canvas moves the whole face
    s.commit()
    assert s.reach is None
    _paint(s, pts=((40, 40), (45, 45)))  # and a stroke after it leaves the change everywhere
    assert s.reach is None
    s.reset()
    assert s.reach is not None
    assert not s.reach.any()
    s.sample(seed=1)
    assert s.reach is None


def test_sessions_saved_before_strokes_were_local_still_open(engine, face_photo: Path, tmp_path: Path) -> None:

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from engine.core.document import load_session, save_session

    s = _session(engine, face_photo)
    _paint(s)
    path = tmp_path / "new.npe"
    save_session(s, path, [], 0)
    files = _npe_files(path)
    tensors = st_load(files["latents.safetensors"])
    assert "edit0.reach.1" in tensors
    files["latents.safetensors"] = st_save({k: v for k, v in tensors.items() if ".reach." not in k})
    old = tmp_path / "old.npe"
    _write_npe(files, old)
    again, _, _ = load_session(engine, old)
    assert again.reach is None  # shown as it was made: everywhere
    s.reach = None
    s._render = None
    assert np.array_equal(again.composite(), s.composite())


def test_reset_and_sample_are_undoable(engine, face_photo: Path) -> None:
    s = _session(engine, face_photo)
    s.sample(seed=3)
    assert not torch.equal(s.z, s.z0)
    s.reset()
    assert torch.equal(s.z, s.z0)
    s.undo()
    s.undo()
    assert torch.equal(s.z, s.z0)
    assert not s.can_undo


def test_latent_canvas_sets_the_latent(engine, face_photo: Path) -> None:
    s = _session(engine, face_photo)
    values = np.linspace(-1, 1, s.latent_dim).astype(np.float32)
    s.set_latent(values)
    assert np.allclose(s.latent_grid().ravel(), values)
    with pytest.raises(ValueError, match="shape"):
        s.set_latent(np.zeros(s.latent_dim + 1, np.float32))


def test_session_file_round_trip_restores_the_same_image(engine, face_photo: Path, tmp_path: Path) -> None:
    from engine.core.document import load_session, save_session

    s = _session(engine, face_photo)
    _paint(s)
    s.set_sliders({"smiling": -1.0})
    s.commit()
    _paint(s, color=(10, 10, 10), pts=((60, 60), (70, 62)))
    s.undo()
    image = s.composite().copy()
    path = tmp_path / "work.npe"
    save_session(s, path, [], 0)
    s2, faces, idx = load_session(engine, path)
    assert np.array_equal(s2.composite(), image)
    assert s2.position == s.position
    assert len(s2.history) == len(s.history)
    assert s2.redo()
    assert s.redo()
    assert np.array_equal(s2.composite(), s.composite())


def test_session_from_another_model_is_refused(engine, face_photo: Path, tmp_path: Path) -> None:
    from engine.core.document import SessionError, load_session, save_session

    s = _session(engine, face_photo)
    path = tmp_path / "work.npe"
    save_session(s, path, [], 0)
    engine.loaded.meta["model_id"] = "another-model"
    with pytest.raises(SessionError, match="another model"):
        load_session(engine, path)
    path.write_bytes(b"garbage")
    with pytest.raises(SessionError, match="not a readable session"):
        load_session(engine, path)


def test_brush_strength_scales_the_latent_step(engine, face_photo: Path) -> None:
    moves = []
    for strength in (0.5, 2.0):
        s = _session(engine, face_photo)
        s.brush_begin((250, 250, 250), 6, strength)
        s.brush_to([(30, 30)])
        moves.append(float((s.z - s.z0).norm()))
    assert moves[1] > 2 * moves[0]
    with pytest.raises(ValueError, match="strength"):
        _session(engine, face_photo).brush_begin((0, 0, 0), 6, 0.0)


def test_a_stroke_that_misses_the_face_says_so_and_changes_nothing(engine) -> None:
    photo = Photo(np.full((400, 400, 3), 128, np.uint8), name="big.png")
    s = EditSession(engine.loaded, photo, face_from_rect(20, 20, 80, 80), "cpu", engine.attributes)
    before = s.snapshot()
    for points, message in ((((350, 350), (380, 360)), "missed the face being edited"),
                            (((-500, -500), (-450, -520)), r"entirely outside the photo \(400x400 pixels\)")):
        s.brush_begin((0, 0, 0), 6)
        for p in points:
            s.brush_to([p])
        with pytest.raises(StrokeMissedError, match=message):
            s.brush_end()
        assert s.stroke is None
        assert not s.can_undo
        assert s.snapshot().same_as(before)
    _paint(s, pts=((45, 50), (55, 52)))  # on the face: an edit, as before
    assert s.can_undo


def test_the_hold_mode_is_part_of_the_edit(engine, face_photo: Path, tmp_path: Path) -> None:
    """Saved with the mode it was made in, reopened the same whatever the mode is now; undone
    with the edit it belongs to."""
    from engine.core.document import load_session, save_session

    s = _session(engine, face_photo)
    s.set_hold(False)
    s.set_sliders({"smiling": 1.5})
    s.commit()
    plain = s.composite()
    s.set_hold(True)  # the other mode gives another picture (smiling holds eyeglasses fixed)
    s.commit()
    assert not np.array_equal(s.composite(), plain)
    s.undo()
    assert not s.hold
    assert np.array_equal(s.composite(), plain)
    path = tmp_path / "edit.npe"
    save_session(s, path, [], 0)
    s.set_hold(True)  # what the editor is set to now does not matter
    again, _, _ = load_session(engine, path)
    assert not again.hold
    assert np.array_equal(again.composite(), plain)
    again.redo()
    assert again.hold


def test_sessions_saved_before_the_mode_was_recorded_still_open(engine, face_photo: Path, tmp_path: Path) -> None:
    import json

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from engine.core.document import load_session, save_session

    s = _session(engine, face_photo)
    s.set_sliders({"smiling": 1.0})
    s.commit()
    path = tmp_path / "v2.npe"
    save_session(s, path, [], 0)
    files = _npe_files(path)  # rewritten as version 1 wrote it: one face, no mode per step
    meta = json.loads(files["session.json"])
    (edit,) = meta.pop("edits")
    meta.update(format_version=1, faces=[edit["face_box"]], face_index=0, position=edit["position"],
                history=[{"sliders": h["sliders"]} for h in edit["history"]])
    files["session.json"] = json.dumps(meta).encode()
    tensors = st_load(files["latents.safetensors"])
    files["latents.safetensors"] = st_save({k.removeprefix("edit0."): v for k, v in tensors.items()})
    old = tmp_path / "v1.npe"
    _write_npe(files, old)
    again, _, _ = load_session(engine, old)
    assert again.hold
    assert np.array_equal(again.composite(), s.composite())


def test_the_slider_offset_is_computed_once_per_setting(engine, face_photo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    s = _session(engine, face_photo)
    s.set_sliders({"smiling": 1.0})
    calls = []
    real = type(s.attributes).offset
    monkeypatch.setattr(type(s.attributes), "offset", lambda self, *a: calls.append(1) or real(self, *a))
    s.brush_begin((10, 10, 10), 6)
    for p in ((30, 30), (40, 32), (50, 34)):
        s.brush_to([p])
    s.brush_end()
    assert len(calls) == 1


def _shortcut_session(tiny_model_dir: Path, face_photo: Path, tmp_path: Path) -> EditSession:
    """A session on a tiny model whose decoder has a shortcut at 8 px, its layer made to matter."""
    import dataclasses
    import shutil

    from engine.core import checkpoint
    from engine.core.model import FaceModel
    from engine.core.pipeline import Engine
    from tests.conftest import TINY, make_tiny_model

    torch.manual_seed(5)
    model = FaceModel(dataclasses.replace(TINY, shortcut=8))
    model.load_state_dict(make_tiny_model().state_dict(), strict=False)
    assert model.decoder.from_shortcut is not None
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder.from_shortcut.weight, 0.0, 1.0)
    folder = tmp_path / "model"
    checkpoint.save_model(model.eval(), folder, model_id="tiny-shortcut")
    for f in tiny_model_dir.glob("attributes.*"):
        shutil.copy(f, folder / f.name)
    return _session(Engine.load(folder, "cpu"), face_photo)


def test_a_model_with_a_shortcut_edits_with_the_photos_own_feature_map(tiny_model_dir: Path, face_photo: Path,
                                                                       tmp_path: Path) -> None:
    """A decoder with a shortcut (AttGAN's) draws the photo from its latent and the encoder's map
    of that photo: the session's rendition is the model's reconstruction, and a stroke still
    moves the painted region toward the paint through the latent."""
    s = _shortcut_session(tiny_model_dir, face_photo, tmp_path)
    with torch.no_grad():
        loaded = s.model.model
        assert torch.allclose(s.recon0, loaded.reconstruct(s.x), atol=1e-6)
        assert not torch.allclose(s.recon0, loaded.decode(s.z0), atol=1e-3)  # the map matters
    paint = torch.tensor([0.9, -0.9, 0.9]).view(3, 1, 1)
    s.brush_begin((242, 13, 242), 8)
    for i in range(12):
        s.brush_to([(20 + i * 3, 40)])
    alpha = torch.from_numpy(s.stroke.alpha.copy())
    s.brush_end()

    def err(z: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((s.decoder(z)[0] - paint) ** 2 * alpha).sum() / alpha.sum())

    assert err(s.z) < err(s.z0) * 0.995


def test_the_photos_map_fades_where_the_brush_reaches_and_comes_back_on_undo(tiny_model_dir: Path, face_photo: Path,
                                                                              tmp_path: Path) -> None:
    """With a shortcut, the decoder gets the photo's map everywhere but where the strokes reach
    (there the latent alone draws the face, so a stroke can change it). G(z0), what the edit is
    measured from, takes the same map, so the fade by itself is no change; a set slider leaves the
    map out, undo brings the whole map back, and a sampled face gets none."""
    s = _shortcut_session(tiny_model_dir, face_photo, tmp_path)
    full = s.photo_map
    assert full is not None
    assert torch.equal(s.kept_map(), full)
    s.paint((20, 20, 20), 4, [(24 + i, 30) for i in range(10)])
    kept = s.kept_map()
    reach = torch.from_numpy(s.reach)
    cells = torch.nn.functional.adaptive_max_pool2d(reach[None, None], full.shape[-2:])[0, 0]
    assert bool((cells == 0).any())
    assert bool((cells == 1).any())
    assert torch.equal(kept[..., cells == 0], full[..., cells == 0])  # untouched where the brush does not reach
    assert torch.equal(kept[..., cells == 1], torch.zeros_like(full[..., cells == 1]))  # gone under the stroke
    with torch.no_grad():
        loaded = s.model.model
        assert torch.allclose(s.recon0, loaded.decode(s.z0, s.a0, kept), atol=1e-6)
        assert torch.allclose(s.generate(s.z), loaded.decode(s.z, s.a, kept), atol=1e-6)
    name = s.attributes.attributes[0].name
    s.set_sliders({name: 1.0})  # a slider leaves the map out everywhere, and G(z0) with it
    assert not s.kept_map().any()
    with torch.no_grad():
        assert torch.allclose(s.recon0, s.model.model.decode(s.z0, s.a0), atol=1e-6)
    s.set_sliders({})
    assert torch.equal(s.kept_map(), kept)
    s.undo()
    s.undo()
    assert torch.equal(s.kept_map(), full)
    with torch.no_grad():
        assert torch.allclose(s.recon0, s.model.model.reconstruct(s.x), atol=1e-6)
    s.sample(seed=1)
    assert not s.kept_map().any()


def _exact_map(s: EditSession) -> torch.Tensor:
    """The photo's feature map faded by the session's reach exactly, as a stroke's end uses it."""
    full = s.photo_map
    assert full is not None
    return full * (1 - torch.nn.functional.adaptive_max_pool2d(s.reach_tensor(), full.shape[-2:]))


def test_during_a_stroke_the_map_fades_again_only_in_steps_and_the_strokes_end_takes_the_exact_map(
        tiny_model_dir: Path, face_photo: Path, tmp_path: Path) -> None:
    """Each new map costs a decode of G(z0) as well as the brush's step, so while a stroke is
    drawn the map stays until the growing reach moves some cell's fade by more than
    MAP_REFRESH_DURING_STROKE; it never lags by more. The stroke's end, and all after it, decode
    with the reach's exact map."""
    from engine.core.session import MAP_REFRESH_DURING_STROKE

    s = _shortcut_session(tiny_model_dir, face_photo, tmp_path)
    full = s.photo_map
    assert full is not None

    def exact() -> torch.Tensor:
        return _exact_map(s)

    decodes: list[int] = []
    hook = s.model.model.decoder.register_forward_hook(lambda *_: decodes.append(1))
    s.brush_begin((20, 20, 20), 4)
    maps: list[torch.Tensor] = []
    n = 40
    for i in range(n):
        s.brush_to([(20 + i * 0.5, 30)])
        kept = s.kept_map()
        assert bool(((kept - exact()).abs() <= MAP_REFRESH_DURING_STROKE * full.abs() + 1e-6).all())
        if not any(kept is m for m in maps):
            maps.append(kept)
    during = len(decodes)
    assert 3 <= len(maps) < n / 2  # faded again now and then, not at every event
    assert during < 1.5 * n  # the brush's step each event; G(z0) only with a new map
    hook.remove()
    given: list[torch.Tensor] = []
    hook = s.model.model.decoder.register_forward_hook(lambda _m, args, _o: given.append(args[2]))
    s.brush_end()  # its steps on release decode with the exact map
    hook.remove()
    assert given
    assert all(torch.equal(m, exact()) for m in given)
    assert torch.equal(s.kept_map(), exact())
    with torch.no_grad():
        assert torch.allclose(s.recon0, s.model.model.decode(s.z0, s.a0, exact()), atol=1e-6)


def test_a_stroke_held_still_takes_its_releases_steps_early_and_ends_where_a_quick_release_would(
        tiny_model_dir: Path, face_photo: Path, tmp_path: Path) -> None:
    """While the pointer rests, ``brush_settle`` takes the release's steps one at a time, each with a
    preview, so the picture settles on what letting go gives; the release takes only the steps
    left, and the stroke ends exactly where one released at once ends. New paint makes all the
    release's steps due again."""
    from engine.core.session import REFINE_STEPS_ON_RELEASE

    points = [(20 + i * 0.5, 30.0) for i in range(40)]  # small moves: the map lags the reach at the end

    def stroke(s: EditSession) -> None:
        s.brush_begin((20, 20, 20), 4)
        for p in points:
            s.brush_to([p])

    quick = _shortcut_session(tiny_model_dir, face_photo, tmp_path)
    stroke(quick)
    quick.brush_end()

    held = _shortcut_session(tiny_model_dir, face_photo, tmp_path / "held")
    stroke(held)
    live = held.stroke
    assert live is not None
    assert not torch.equal(held.kept_map(), _exact_map(held))  # the rest's steps must not decode with this one
    before = held.z.clone()
    previews = []
    while (p := held.brush_settle()) is not None:
        previews.append(p)
    assert len(previews) == REFINE_STEPS_ON_RELEASE
    assert not held.can_settle()
    assert not torch.equal(held.z, before)  # the hold moved the picture on
    held.brush_end()
    assert len(live.losses) == len(points) + REFINE_STEPS_ON_RELEASE  # the release took no more steps
    assert torch.equal(held.z, quick.z)
    assert torch.equal(held.render().shown, quick.render().shown)

    # paint after a rest: all the release's steps are due again, less any rest after it
    again = _shortcut_session(tiny_model_dir, face_photo, tmp_path / "again")
    stroke(again)
    again.brush_settle()
    again.brush_settle()
    again.brush_to([(40.0, 36.0)])
    assert again.can_settle()
    live = again.stroke
    assert live is not None
    again.brush_settle()
    again.brush_end()
    assert len(live.losses) == len(points) + 2 + 1 + REFINE_STEPS_ON_RELEASE
