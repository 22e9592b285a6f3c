"""Brush updates and the interpolation-mask render, on a tiny random decoder."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.core.edit import (
    BrushOptimizer,
    BrushRule,
    MaskSettings,
    halo_of,
    hue_drift,
    paint_loss,
    render,
    stamp_segment,
)
from tests.conftest import TINY, make_tiny_model


def _stroke(color: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    r = TINY.resolution
    alpha = np.zeros((r, r), np.float32)
    paint = np.zeros((r, r, 3), np.float32)
    stamp_segment(alpha, paint, (8, 8), (20, 10), 3.0, np.array([color, -color, color], np.float32))
    return torch.from_numpy(paint).permute(2, 0, 1)[None], torch.from_numpy(alpha)[None, None]


def test_stamp_segment_covers_the_segment_and_nothing_far_away() -> None:
    alpha = np.zeros((32, 32), np.float32)
    paint = np.zeros((32, 32, 3), np.float32)
    stamp_segment(alpha, paint, (5, 5), (25, 5), 2.0, np.array([1, 0, 0], np.float32))
    assert alpha[5, 5] == 1
    assert alpha[5, 15] == 1
    assert alpha[5, 25] == 1
    assert alpha[20, 15] == 0
    assert (paint[alpha > 0][:, 0] == 1).all()


@pytest.mark.parametrize("rule", [BrushRule("adam"), BrushRule("adam", keep=0.0), BrushRule("sgd2016")])
def test_brush_steps_lower_the_masked_colour_error(rule: BrushRule) -> None:
    model = make_tiny_model()
    z = torch.randn(1, TINY.latent_dim, generator=torch.Generator().manual_seed(1))
    paint, alpha = _stroke()
    with torch.no_grad():
        start = model.decoder(z)
    opt = BrushOptimizer(z, rule, 3.0, start)
    before = float(paint_loss(start, paint, alpha))
    for _ in range(40 if rule.kind == "adam" else 200):
        opt.step(model.decoder, paint, alpha)
    with torch.no_grad():
        after = float(paint_loss(model.decoder(opt.z), paint, alpha))
    assert after < before * 0.97


def test_brush_step_leaves_the_decoder_untouched() -> None:
    model = make_tiny_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    z = torch.zeros(1, TINY.latent_dim)
    paint, alpha = _stroke()
    opt = BrushOptimizer(z, BrushRule(), 3.0, model.decoder(z).detach())
    opt.step(model.decoder, paint, alpha)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(opt.z.detach(), z)


def test_render_keeps_the_photo_where_nothing_changed() -> None:
    model = make_tiny_model()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z0 = torch.randn(1, TINY.latent_dim)
    with torch.no_grad():
        recon0 = model.decoder(z0)
        y, mask = render(x, recon0, recon0)
    assert torch.equal(y, x)
    assert mask.max() == 0
    # a change confined to one corner leaves far pixels exactly equal to the photo
    gen = recon0.clone()
    gen[..., :6, :6] += 0.8
    y, mask = render(x, recon0, gen, MaskSettings())
    assert mask[..., 0, 0] > 0.9
    far = mask[0, 0] == 0
    assert far.sum() > 500
    assert torch.equal(y[0][:, far], x[0][:, far])


def test_a_slider_change_is_added_in_full_and_keeps_the_photo_detail() -> None:
    x = torch.rand(1, 3, 32, 32) * 1.6 - 0.8
    plain = torch.zeros(1, 3, 32, 32)  # G(z without sliders) = G(z0): no brush edit
    shift = torch.zeros(1, 3, 32, 32)
    shift[..., 8:24, 8:24] = 0.1  # a subtle, spread-out change (a slider's)
    settings = MaskSettings()
    y, weight = render(x, plain, plain + shift, settings, without_sliders=plain)
    inner = (slice(None), slice(None), slice(12, 20), slice(12, 20))
    assert torch.allclose(y[inner], x[inner] + 0.1, atol=1e-6)  # all of it, on top of the photo
    assert torch.equal(y[..., :2, :], x[..., :2, :])  # nothing far away
    assert weight[..., 16, 16] == 1
    # the brush's blend rule would show only part of the same change, and lose the photo's detail
    blended, _ = render(x, plain, plain + shift, settings)
    assert not torch.allclose(blended[inner], x[inner] + 0.1, atol=1e-3)


def test_bad_latent_shape_names_the_dimension() -> None:
    from engine.core.edit import check_image

    with pytest.raises(ValueError, match="height 31"):
        check_image("x", torch.zeros(1, 3, 31, 32), 32)


def test_written_out_adam_matches_torch_adam() -> None:
    model = make_tiny_model()
    z = torch.randn(1, TINY.latent_dim, generator=torch.Generator().manual_seed(4))
    paint, alpha = _stroke()
    rule = BrushRule("adam", keep=0.0, hue=0.0)
    ours = BrushOptimizer(z, rule, 3.0, model.decoder(z).detach())
    ref = z.clone().requires_grad_(True)
    adam = torch.optim.Adam([ref], lr=rule.lr, betas=BrushOptimizer.BETAS, eps=BrushOptimizer.EPS)
    for _ in range(5):
        ours.step(model.decoder, paint, alpha)
        adam.zero_grad()
        paint_loss(model.decoder(ref), paint, alpha, rule.chroma).backward()
        adam.step()
    assert torch.allclose(ours.z.detach(), ref.detach(), atol=1e-6)


def test_the_paint_error_weights_hue_against_lightness() -> None:
    """chroma 1 is the plain RGB error; above 1 a wrong hue costs more than a wrong lightness of
    the same RGB distance (the brush's dark paint once drifted greenish)."""
    paint = torch.full((1, 3, 4, 4), -0.6)
    alpha = torch.ones(1, 1, 4, 4)
    lighter = paint + 0.3  # the same colour, lighter: lightness error only
    greener = paint + torch.tensor([-0.3, 0.3, 0.0]).view(1, 3, 1, 1) * math.sqrt(1.5)  # same RGB distance
    assert float(((lighter - paint) ** 2).sum()) == pytest.approx(float(((greener - paint) ** 2).sum()), rel=1e-5)
    for image in (lighter, greener):
        assert float(paint_loss(image, paint, alpha, 1.0)) == pytest.approx(float(((image - paint) ** 2).mean()))
    plain = {name: float(paint_loss(im, paint, alpha, 1.0)) for name, im in (("l", lighter), ("g", greener))}
    assert float(paint_loss(lighter, paint, alpha, 3.0)) == pytest.approx(plain["l"])
    assert float(paint_loss(greener, paint, alpha, 3.0)) == pytest.approx(3 * plain["g"])


def test_hue_drift_counts_a_third_hue_but_not_a_mix_of_photo_and_paint() -> None:
    start = torch.tensor([0.4, 0.2, -0.3]).view(1, 3, 1, 1).expand(1, 3, 6, 6)  # fair hair
    paint = torch.tensor([-0.8, -0.85, -0.9]).view(1, 3, 1, 1).expand(1, 3, 6, 6)  # dark brown
    alpha = torch.zeros(1, 1, 6, 6)
    alpha[..., 2:4, 2:4] = 1
    halo = torch.ones(1, 1, 6, 6)
    for t in (0.0, 0.3, 1.0):
        assert float(hue_drift(start + t * (paint - start), start, paint * alpha, alpha, halo)) < 1e-10
    assert float(hue_drift(start - 0.2, start, paint * alpha, alpha, halo)) < 1e-10  # darker, same hue
    mixed = start + 0.7 * (paint - start)
    greener = mixed + torch.tensor([-0.1, 0.1, 0.0]).view(1, 3, 1, 1)
    assert float(hue_drift(greener, start, paint * alpha, alpha, halo)) > 1e-3
    assert float(hue_drift(greener, start, paint * alpha, alpha, torch.zeros_like(halo))) == 0  # outside the halo


def test_the_hue_term_keeps_a_stroke_closer_to_the_line_from_photo_to_paint() -> None:
    model = make_tiny_model()
    z = torch.randn(1, TINY.latent_dim, generator=torch.Generator().manual_seed(2))
    paint, alpha = _stroke(0.6)
    halo = halo_of(alpha, 6.0)
    with torch.no_grad():
        start = model.decoder(z)
    drift = {}
    for weight in (0.0, 300.0):
        opt = BrushOptimizer(z, BrushRule("adam", hue=weight), 3.0, start)
        for _ in range(30):
            opt.step(model.decoder, paint, alpha, halo)
        with torch.no_grad():
            drift[weight] = float(hue_drift(model.decoder(opt.z), start, paint, alpha, halo))
    assert drift[300.0] < drift[0.0] * 0.8


def test_npe_eval_reports_brush_colour_in_cielab_on_the_exported_photo(tiny_model_dir, tmp_path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from engine.tools.cli import main
    from engine.tools.evaluate import STROKES, _lab
    from tests.test_train import make_cache

    white, green = _lab(np.array([255, 255, 255])), _lab(np.array([0, 160, 0]))
    assert abs(white[0] - 100) < 0.5
    assert abs(white[1]) < 0.5
    assert green[1] < -40  # green is negative a*
    data = make_cache(tmp_path / "data", n=40, size=32)
    assert main(["eval", "--data", str(data), "--weights", str(tiny_model_dir), "--device", "cpu", "--n", "6",
                 "--brush-n", "3", "--grid", str(tmp_path / "g.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    drift = out["brush_hue_drift"]
    assert set(drift) == {"mean", "p90"} | {s.name for s in STROKES}
    assert 0 <= drift["mean"] <= drift["p90"]
    report = out["brush_export_lab"]
    assert set(report) == {s.name for s in STROKES}
    for figures in report.values():
        assert figures["delta_e_before"] > 0
        assert all(np.isfinite(v) for v in figures.values())


def test_npe_eval_scores_celeba_held_out_faces_whatever_else_the_cache_holds(tmp_path) -> None:
    """Adding LFW to a prepared folder's cache (a training run does) must not move the figures."""
    import json

    from engine.tools.evaluate import load_eval_crops
    from tests.test_train import make_cache

    data = make_cache(tmp_path / "data", n=40, size=32)
    before, source, _ = load_eval_crops(data, 32, 500)
    assert source == "held-out split (celeba)"
    assert len(before) == 8  # every fifth face is held out
    meta_path = data / "aligned-32" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for it in meta["items"][20:]:
        it["set"] = "lfw"
    meta_path.write_text(json.dumps(meta))
    celeba_only, _, _ = load_eval_crops(data, 32, 500)
    assert len(celeba_only) == 4
    assert np.array_equal(celeba_only, before[:4])
    for it in meta["items"]:
        it["set"] = "lfw"
    meta_path.write_text(json.dumps(meta))
    lfw, source, _ = load_eval_crops(data, 32, 500)  # no CelebA at all: the cache's own held-out faces
    assert source == "held-out split"
    assert np.array_equal(lfw, before)


def test_npe_eval_measures_edits_on_whole_photos(tiny_model_dir, tmp_path, astronaut,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Texture ratio and background change on photos at their own size (issue 13's figures)."""
    import json
    import shutil

    from PIL import Image

    from engine.tools.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "portrait.png")
    Image.new("RGB", (200, 200), (90, 90, 90)).save(photos / "no-face.png")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    doc = json.loads((model / "attributes.json").read_text())
    doc["attributes"][1]["name"] = "blond_hair"  # the tiny model's second slider stands in for a hair colour
    doc["attributes"][0].update(name="beard", default_hold=[])  # and its first for a slider about one part
    (model / "attributes.json").write_text(json.dumps(doc))
    assert main(["eval", "--photo-edits", "--data", str(photos), "--weights", str(model), "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["photos"] == 1
    assert figures["skipped_no_face"] == 1
    assert figures["median_size"] == [512, 512]
    assert figures["sliders"] == ["blond_hair"]
    assert figures["fringe_texture_ratio"] > 0
    assert figures["fringe_eyes_change_255"] > 0  # measured on the painted photo, before the reset
    assert figures["slider_background_change_255"] >= 0
    assert figures["slider_skin_change_255"] >= 0
    assert figures["slider_hair_change_255"] > figures["slider_background_change_255"]  # the edit is on the head
    assert figures["slider_bare_forehead_change_255"] is None  # no Bangs labels in a plain folder
    assert figures["bare_forehead_edits"] == 0
    # the beard where it must show and where it must not; no figures for sliders the model lacks
    assert {"beard_mouth_and_chin_change_255", "beard_eyes_change_255", "beard_hair_change_255"} <= set(figures)
    assert all(figures[k] >= 0 for k in figures if k.startswith("beard_"))
    assert not any(k.startswith(("pale_skin_", "eyeglasses_", "smiling_")) for k in figures)


def test_the_real_fringe_reference_finds_more_texture_on_foreheads_with_bangs(tmp_path, astronaut) -> None:
    """npe eval --photo-edits's reference for the fringe texture ratio: held-out CelebA photos of
    dark-haired people, with bangs (here: strands drawn over the forehead) against without."""
    from PIL import Image

    from engine.tools.data import list_items
    from engine.tools.evaluate import real_fringe_texture
    from tests.test_faces import _celeba_folder

    data, names = _celeba_folder(tmp_path, Image.fromarray(astronaut), 5, held_out=True)
    fringed = astronaut.copy()
    fringed[45:95, 175:280:4] = (25, 20, 15)  # dark strands hanging where the fringe stroke goes
    Image.fromarray(fringed).save(data / "celeba" / "images" / names[0], quality=95)
    Image.fromarray(fringed).save(data / "celeba" / "images" / names[1], quality=95)
    columns = ["Bangs", "Black_Hair", "Brown_Hair", "Smiling"]
    rows = [[1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, -1, 1], [-1, -1, 1, 1], [1, -1, -1, 1]]  # the last: fair hair
    table = "".join(f"{n} {' '.join(map(str, r))}\n" for n, r in zip(names, rows, strict=True))
    (data / "celeba" / "list_attr_celeba.txt").write_text(f"{len(rows)}\n{' '.join(columns)}\n" + table)
    ref = real_fringe_texture(data, list_items(data, ("celeba",)), None)  # the cascade's eyes
    assert ref is not None
    assert (ref["photos_with_bangs"], ref["photos_without"]) == (2, 2)
    assert ref["ratio"] > 1.5
    (data / "celeba" / "list_attr_celeba.txt").write_text("5\nSmiling\n" + "".join(f"{n} 1\n" for n in names))
    assert real_fringe_texture(data, list_items(data, ("celeba",)), None) is None  # no hair labels, no reference


class _Identity(torch.nn.Module):
    """A 'model' that reconstructs exactly what it reads."""

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_models_of_other_resolutions_are_scored_on_the_same_faces_at_the_same_size() -> None:
    """--compare-at: a model that reads and draws faces at half the size loses their fine
    detail, which the figures at the full size must show; at its own size it loses nothing."""
    from engine.tools.evaluate import reconstruction_metrics

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    own = reconstruction_metrics(_Identity(), faces, resolution=32)
    assert own["psnr"] > 90
    assert own["ssim"] > 0.999
    assert abs(own["sharpness"] - 1) < 1e-4
    half = reconstruction_metrics(_Identity(), faces, resolution=16)
    assert half["psnr"] < 20
    assert half["sharpness"] < 0.3
    assert reconstruction_metrics(_Identity(), faces) == own  # no resolution given: read as they come


def test_the_grids_interpolation_runs_from_one_reconstruction_to_the_other() -> None:
    """The eval grid's last row blends two faces. For a model whose decoder also takes attribute
    intensities and the shortcut's map, all of what the encoder read is blended: the row's ends
    are the two reconstructions, not the model's average face drawn from the latent alone."""
    from engine.core.model import FaceModel
    from engine.tools.evaluate import between_two_faces
    from tests.conftest import CONDITIONED

    torch.manual_seed(3)
    model = FaceModel(replace(CONDITIONED, shortcut=8))
    model.load_state_dict(make_tiny_model().state_dict(), strict=False)
    with torch.no_grad():
        for layer in [model.decoder.cond_fc, *model.decoder.cond_blocks, model.decoder.from_shortcut]:
            torch.nn.init.normal_(layer.weight, 0.0, 0.8)
    model.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        row = model.decode(*between_two_faces(model, x[0:1], x[1:2], 5))
        recon = model.reconstruct(x)
    assert row.shape == (5, 3, 32, 32)
    assert torch.allclose(row[0], recon[0], atol=1e-5)
    assert torch.allclose(row[-1], recon[1], atol=1e-5)
    assert (row[2] - recon[0]).abs().mean() > 1e-3  # the middle is neither end
    assert (row[2] - recon[1]).abs().mean() > 1e-3


def test_a_slider_change_loses_its_colour_speckle_not_its_lightness_or_its_tint() -> None:
    """The decoder's change carries pixel-sized green / purple speckle; the paste-back would enlarge
    it into blotches. Its colour is smoothed: the speckle goes, the change's lightness detail and
    its overall tint stay."""
    from engine.core.edit import smooth_chroma

    def opponent(t: torch.Tensor) -> torch.Tensor:  # lightness, red - green, yellow - blue
        r, g, b = t[:, 0], t[:, 1], t[:, 2]
        return torch.stack([(r + g + b) / 3, r - g, (r + g) / 2 - b], 1)

    checker = (torch.arange(64).view(-1, 1) + torch.arange(64).view(1, -1)) % 2 * 2.0 - 1  # +-1, pixel by pixel
    tint = torch.tensor([0.12, 0.0, -0.12]).view(1, 3, 1, 1).expand(1, 3, 64, 64)  # warmer everywhere
    speckle = torch.stack([checker, -checker, torch.zeros_like(checker)]) * 0.08  # green / purple, no lightness
    strands = torch.stack([checker] * 3) * 0.05  # lightness detail
    shift = tint + speckle[None] + strands[None]
    x = torch.zeros(1, 3, 64, 64)
    plain = torch.zeros(1, 3, 64, 64)
    settings = MaskSettings(shift_fade=0.0)
    y, weight = render(x, plain, plain + shift, settings, without_sliders=plain)
    assert weight.min() == 1
    shown, asked = opponent(y - x), opponent(shift)
    inner = (slice(None), slice(None), slice(8, 56), slice(8, 56))
    assert torch.allclose(shown[:, :1][inner], asked[:, :1][inner], atol=1e-5)  # lightness as it was
    rg = shown[:, 1][inner[:1] + inner[2:]]
    assert abs(float(rg.mean()) - 0.12) < 0.01  # the tint stays
    assert float((rg - rg.mean()).abs().mean()) < 0.2 * 0.16  # the speckle (+-0.16 red-green) mostly goes
    # with the smoothing off, the shift is added as it came
    assert torch.allclose(smooth_chroma(shift, 0.0), shift)
    y0, _ = render(x, plain, plain + shift, replace(settings, chroma_sigma=0.0), without_sliders=plain)
    assert torch.allclose(y0, (x + shift).clamp(-1, 1), atol=1e-6)


def test_the_brush_takes_the_decoders_broad_colour_and_keeps_the_photos_fine_colour() -> None:
    """Where the brush replaces the photo (M = 1) the result has G's lightness and G's colour
    at large scale, while the fine colour is the photo's own, not G's pixel-sized speckle."""
    checker = ((torch.arange(64).view(-1, 1) + torch.arange(64).view(1, -1)) % 2 * 2.0 - 1)

    def red_green(t: torch.Tensor) -> torch.Tensor:
        return t[0, 0] - t[0, 1]

    recon0 = torch.zeros(1, 3, 64, 64)
    paint = torch.tensor([-0.6, -0.7, -0.75]).view(1, 3, 1, 1).expand(1, 3, 64, 64)  # dark brown everywhere
    speckle = torch.stack([checker, -checker, torch.zeros_like(checker)])[None] * 0.1  # G's green / purple
    generated = paint + speckle
    stripes = (torch.arange(64) % 2 * 2.0 - 1).view(1, -1).expand(64, 64)  # the photo's own fine colour
    x = torch.stack([0.4 + 0.05 * stripes, torch.full((64, 64), 0.3), torch.full((64, 64), 0.2)])[None]
    y, mask = render(x, recon0, generated, MaskSettings())
    inner = (slice(8, 56), slice(8, 56))
    assert mask[0, 0][inner].min() == 1
    lightness = y.mean(1)[0][inner]
    assert torch.allclose(lightness, generated.mean(1)[0][inner], atol=1e-5)  # G's lightness
    rg = red_green(y)[inner]
    assert abs(float(rg.mean()) - float(red_green(paint)[inner].mean())) < 0.01  # G's broad colour
    photo_detail = red_green(x)[inner] - red_green(x)[inner].mean()
    assert float((rg - rg.mean() - photo_detail).abs().mean()) < 0.1 * 0.2  # not G's +-0.2 speckle
    y0, _ = render(x, recon0, generated, MaskSettings(chroma_sigma=0.0))
    assert torch.allclose(y0[..., 8:56, 8:56], generated[..., 8:56, 8:56], atol=1e-6)  # without it: G as it is
