"""Slider directions turned through the decoder against a guide classifier (engine.tools.slider_guide)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.core.model import AttributeClassifier
from engine.tools import slider_guide
from engine.tools.slider_guide import guide_direction, train_guide
from tests.conftest import TINY, make_tiny_model


class _Stub(AttributeClassifier):
    """A 'guide' with fixed readings: attribute 0 is how blue the picture's top half is, attribute 1
    how bright its bottom half is."""

    def __init__(self) -> None:
        super().__init__(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-2] // 2
        blue = (x[:, 2, :h] - x[:, :2, :h].mean(1)).mean((1, 2))
        bright = x[:, :, h:].mean((1, 2, 3))
        return torch.stack([20 * blue, 20 * bright], 1)


def _setup(seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    model = make_tiny_model(seed).eval()
    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(64, TINY.latent_dim)).astype(np.float32)
    photos = rng.integers(60, 200, (64, TINY.resolution, TINY.resolution, 3), dtype=np.uint8)
    v = rng.normal(size=TINY.latent_dim).astype(np.float32)
    return model.decoder.requires_grad_(False), latents, photos, v / np.linalg.norm(v)


def _reading(decoder: nn.Module, guide: nn.Module, k: int, v: np.ndarray, latents: np.ndarray, photos: np.ndarray,
             step: float) -> float:
    from engine.core.images import to_tensor

    z = torch.from_numpy(latents)
    with torch.no_grad():
        change = decoder(z + torch.from_numpy(v) * step) - decoder(z)
        return float(guide((to_tensor(photos) + change).clamp(-1, 1))[:, k].mean())


def test_a_turned_direction_shows_its_attribute_more_and_keeps_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slider_guide, "CAST_WEIGHT", 0.0)  # a random decoder's every change is coloured
    decoder, latents, photos, v = _setup()
    guide = _Stub()
    turned = guide_direction(decoder, guide, 1, v, 2.0, latents, lambda r: photos[r].copy(), np.arange(64),
                             60)
    assert abs(np.linalg.norm(turned) - 1) < 1e-5
    before = _reading(decoder, guide, 1, v, latents, photos, 2.0)
    assert _reading(decoder, guide, 1, turned, latents, photos, 2.0) > before + 0.1  # measured: 0.25 -> 0.41


def test_the_colour_term_stops_a_turn_that_only_tints_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    """'Blue on top' is easiest to get by tinting: without the colour term the edit's colour change
    drifts far from the plain direction's, with it much less."""
    decoder, latents, photos, v = _setup(1)
    guide = _Stub()
    z = torch.from_numpy(latents)

    def cast_of(direction: np.ndarray) -> float:
        with torch.no_grad():
            change = decoder(z + torch.from_numpy(direction) * 2.0) - decoder(z)
            plain = decoder(z + torch.from_numpy(v) * 2.0) - decoder(z)
        return float((slider_guide._chroma(change) - slider_guide._chroma(plain)).abs().sum(1).mean())

    drift = {}
    for weight in (0.0, 50.0):
        monkeypatch.setattr(slider_guide, "CAST_WEIGHT", weight)
        drift[weight] = cast_of(guide_direction(decoder, guide, 0, v, 2.0, latents,
                                                lambda r: photos[r].copy(), np.arange(64), 60))
    assert drift[50.0] < 0.5 * drift[0.0], drift


def test_the_guide_learns_labels_from_photos() -> None:
    """Bright photos labelled +1 and dark ones -1 (one label unknown throughout): the guide
    tells them apart."""
    rng = np.random.default_rng(0)
    bright = rng.random(200) < 0.5
    photos = np.where(bright[:, None, None, None], 170, 80).astype(np.uint8) + rng.integers(
        0, 30, (200, 32, 32, 3), dtype=np.uint8)
    labels = np.stack([np.where(bright, 1.0, -1.0), np.zeros(200)], 1).astype(np.float32)
    guide = train_guide(lambda r: photos[r].copy(), labels, batches=40)
    from engine.core.images import to_tensor

    with torch.no_grad():
        said = guide(to_tensor(photos))[:, 0] > 0
    assert (said.numpy() == bright).mean() > 0.95


def test_colour_sliders_keep_their_mean_difference_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Black, brown, grey hair and pale skin are not turned (the turn took their colour further
    from real photos'); blond hair and the other latent sliders are, against one guide trained on
    every slider's labels."""
    from types import SimpleNamespace

    from engine.core.attributes import Attribute, SliderKind
    from engine.tools import attribute_learning

    turned: list[int] = []

    def fake_turn(decoder: object, guide: object, k: int, direction: np.ndarray, *args: object,
                  **kw: object) -> np.ndarray:
        turned.append(k)
        return -direction

    trained_on: list[tuple[int, ...]] = []
    monkeypatch.setattr(attribute_learning, "guide_direction", fake_turn)
    monkeypatch.setattr(attribute_learning, "train_guide", lambda photos, labels: trained_on.append(labels.shape))
    names = ["Smiling", "Black_Hair", "Pale_Skin", "Blond_Hair"]
    attrs = [Attribute("smiling", "Smiling", 1.0), Attribute("black_hair", "Black hair", 1.0),
             Attribute("pale_skin", "Pale skin", 1.0), Attribute("blond_hair", "Blond hair", 1.0),
             Attribute("pc1", "Latent direction 1", 1.0, kind=SliderKind.PRINCIPAL)]
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=8).astype(np.float32) for _ in attrs]
    before = [v.copy() for v in vectors]
    labels = rng.choice(np.array([-1, 1], np.int8), (20, 4))
    engine = SimpleNamespace(loaded=SimpleNamespace(model=SimpleNamespace(decode=None)))
    attribute_learning.guide_sliders(engine, attrs, vectors, np.zeros((20, 8), np.float32), labels, names,
                                     lambda r: np.zeros((len(r), 8, 8, 3), np.uint8), 5)  # type: ignore[arg-type]
    assert trained_on == [(20, 4)]  # the guide reads all four sliders' attributes
    assert turned == [0, 3]  # smiling and blond hair, by their column in the guide
    for i, name in enumerate(a.name for a in attrs):
        assert np.array_equal(vectors[i], -before[i] if name in ("smiling", "blond_hair") else before[i]), name
    # with only sliders that are kept, no guide is trained at all
    attribute_learning.guide_sliders(engine, attrs[1:3], vectors[1:3], np.zeros((20, 8), np.float32), labels, names,
                                     lambda r: np.zeros((len(r), 8, 8, 3), np.uint8), 5)  # type: ignore[arg-type]
    assert trained_on == [(20, 4)]
    assert turned == [0, 3]
