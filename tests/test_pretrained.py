"""The shipped weights in ``pretrained/``: they load through the one loader, fit the size
limit, reconstruct a real photo as that person (not an average face), follow the brush,
and their attribute directions match the model and move the judge the right way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core import align
from engine.core.attributes import Attribute, SliderKind
from engine.core.checkpoint import DEFAULT_MODEL_DIR, FORMAT_VERSION
from engine.core.judge import judge_scores, load_judge
from engine.core.pipeline import Engine, open_session
from engine.tools.attribute_learning import SLIDERS

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "resources" / "astronaut.png"

pytestmark = [pytest.mark.weights,
              pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.safetensors").exists(),
                                 reason="no face model shipped in pretrained/")]


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine.load(None, "cpu")


def test_shipped_files_are_small_versioned_safetensors() -> None:
    cfg = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION
    for f in DEFAULT_MODEL_DIR.glob("*.safetensors"):
        assert f.stat().st_size < 40 * 2**20, f
    assert not list(DEFAULT_MODEL_DIR.glob("*.pt"))
    assert not list(DEFAULT_MODEL_DIR.glob("*.pth"))
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "non-commercial" in card
    assert cfg["model_id"] in card


def test_info_reports_the_shipped_model() -> None:
    r = subprocess.run([sys.executable, "-m", "engine.tools.cli", "info", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    cfg = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert Path(info["weights"]).resolve() == (DEFAULT_MODEL_DIR / "model.safetensors").resolve()
    assert info["resolution"] == cfg["model"]["resolution"] in (64, 128)
    assert info["latent_dim"] == 256
    named = [s["name"] for s in info["sliders"] if s["kind"] != SliderKind.PRINCIPAL.value]
    assert named
    assert set(named) <= set(SLIDERS)
    assert {s["quality"] for s in info["sliders"]} <= {"good", "weak", "failing"}


def _l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def test_reconstruction_is_the_person_not_an_average_face(engine: Engine) -> None:
    session, faces = open_session(engine, ASTRONAUT)
    assert len(faces) == 1
    x = session.x
    with torch.inference_mode():  # (a conditioned decoder is given the photo's attribute reading throughout)
        recon = session.generate(session.z0, sliders=False)
        average = session.generate(torch.zeros_like(session.z0), sliders=False)
        others = session.generate(torch.randn(16, session.z0.shape[1], generator=torch.Generator().manual_seed(1)),
                                  sliders=False)
    err = _l1(recon, x)
    assert err < 0.7 * _l1(average, x)
    # closer to the photo than any of 16 random faces from the prior
    assert err < min(_l1(o[None], x) for o in others)
    # and not a blur: the reconstruction keeps a real share of the photo's Laplacian energy
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)

    def energy(t: torch.Tensor) -> float:
        return float(torch.nn.functional.conv2d(t, lap, groups=3).pow(2).mean())

    assert energy(recon) > 0.2 * energy(x)


def test_dark_paint_on_the_forehead_darkens_it_and_nothing_far_away(engine: Engine) -> None:
    session, _ = open_session(engine, ASTRONAUT)
    r = session.resolution
    inv = np.linalg.inv(np.vstack([session.transform, [0, 0, 1]]))[:2]

    def to_photo(u: float, v: float) -> tuple[float, float]:
        p = inv @ np.array([u * r, v * r, 1.0])
        return float(p[0]), float(p[1])

    before = session.render().shown.clone()
    session.brush_begin((30, 20, 15), radius_photo=0.06 * r / align.scale_of(session.transform))
    pts = [to_photo(0.35 + 0.3 * t, 0.24) for t in np.linspace(0, 1, 20)]
    for p in pts:
        session.brush_to([p])
    session.brush_end()
    after = session.render().shown
    band = slice(int(0.19 * r), int(0.29 * r)), slice(int(0.37 * r), int(0.63 * r))
    lum_before = float(before[0, :, band[0], band[1]].mean())
    lum_after = float(after[0, :, band[0], band[1]].mean())
    assert lum_after < lum_before - 0.1
    # the chin is far from the stroke: the mask keeps it (nearly) the photo
    painted = float((after - before)[0, :, band[0], band[1]].abs().mean())
    chin = float((after - session.x)[0, :, int(0.85 * r):].abs().mean())
    assert chin < 0.05 * painted


def _named_sliders(engine: Engine) -> list[Attribute]:
    """The shown attribute sliders: latent directions, or a conditioned model's input entries."""
    return [a for a in engine.attributes.visible() if a.kind is not SliderKind.PRINCIPAL]


def test_attribute_sliders_match_the_model_and_move_the_judge(engine: Engine) -> None:
    attrs = engine.attributes
    assert attrs.latent_dim == engine.loaded.config.latent_dim
    shown = _named_sliders(engine)
    assert shown, "every named slider is hidden"
    judge, names = load_judge(DEFAULT_MODEL_DIR)
    session, _ = open_session(engine, ASTRONAUT)
    # the astronaut and seven faces from the prior
    z = torch.cat([session.z0, torch.randn(7, session.z0.shape[1], generator=torch.Generator().manual_seed(2))])
    right = 0
    for a in shown:
        _, col, sign = SLIDERS[a.name]
        with torch.inference_mode():
            session.set_sliders({a.name: 1.0})
            up = judge_scores(judge, session.decoder(z + session.slider_offset(), session.a))[:, names.index(col)]
            session.set_sliders({a.name: -1.0})
            down = judge_scores(judge, session.decoder(z + session.slider_offset(), session.a))[:, names.index(col)]
        session.set_sliders({})
        right += int(float((up - down).mean()) * sign > 0)
    assert right >= 0.8 * len(shown), f"{right} of {len(shown)} shown sliders move the judge the right way"


def test_the_shown_sliders_change_reaches_the_photo(engine: Engine) -> None:
    """What the editor shows moves by (nearly) all of the decoder's change for each shown slider,
    inside the region it may change (the person; the hair for a hair colour): the brush's blend
    mask once cut a smile's +1 step to a fifth of what the judge needs."""
    session, _ = open_session(engine, ASTRONAUT)
    r = session.resolution
    inner = (..., slice(r // 5, r - r // 5), slice(r // 5, r - r // 5))  # inside the fade at the crop's border
    for a in _named_sliders(engine):
        session.set_sliders({a.name: 1.0})
        shown = session.render().shown
        where = (session.slider_region() > 0.9).expand_as(shown)[inner]  # type: ignore[union-attr]
        with torch.inference_mode():
            raw = _l1(session.generate(session.z)[inner][where], session.recon0[inner][where])
        # measured: 0.89-1.00 of it; 0.79 for mouth open since its direction was turned through the
        # decoder (a smaller change on her open smile, more of it under the render's 0.04 threshold)
        assert _l1(shown[inner][where], session.x[inner][where]) > 0.75 * raw, a.name


def test_the_shipped_hair_detail_grows_stubble_where_a_beard_stroke_darkens_the_jaw(engine: Engine) -> None:
    """The hair detail network in pretrained/: a dark stroke along the astronaut's jaw grows
    hair texture there (the export's fine detail rises over the plain paste-back's), keeps the
    stroke's colour, and leaves everything the growth does not reach as it was."""
    import cv2

    assert engine.detail is not None
    meta = json.loads((DEFAULT_MODEL_DIR / "detail.json").read_text())
    assert meta["face_model"] == engine.loaded.model_id  # it learned this model's renditions
    session, _ = open_session(engine, ASTRONAUT)
    r = session.resolution
    inv = np.linalg.inv(np.vstack([session.transform, [0, 0, 1]]))[:2]
    jaw = [(0.33, 0.8), (0.4, 0.88), (0.5, 0.9), (0.6, 0.88), (0.67, 0.8)]
    pts = [tuple(float(c) for c in inv @ np.array([u * r, v * r, 1.0])) for u, v in jaw]
    session.paint((45, 35, 28), 0.045 * r / align.scale_of(session.transform), pts)
    plain, grown = session.composite(), session.composite(detail=True)
    growth = session.growth()
    assert growth is not None
    h, w = plain.shape[:2]
    weight = cv2.warpAffine(growth, session.transform, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

    def fine(img: np.ndarray) -> np.ndarray:
        return np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))

    hair = weight > 0.5
    assert hair.sum() > 200
    # 1.19 times here (1.30 on the 1024-px astronaut); without the network's strands it is 1
    assert fine(grown)[hair].mean() > 1.15 * fine(plain)[hair].mean()
    # the strands keep the stroke's colour (no cast: every channel moves alike) and darken it a
    # little, as dark hairs do (-9 here)
    shift = grown[hair].astype(float).mean(0) - plain[hair].astype(float).mean(0)
    assert np.ptp(shift) < 4
    assert np.abs(shift).max() < 15
    changed = np.abs(grown.astype(np.int16) - plain.astype(np.int16)).max(axis=2) > 0
    assert not changed[weight == 0].any()
