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
    return model.decoder, latents, photos, v / np.linalg.norm(v)


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
    turned = guide_direction(decoder, guide, 1, v, 2.0, latents, lambda r: photos[r].copy(), np.arange(64), 60)
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
        drift[weight] = cast_of(guide_direction(decoder, guide, 0, v, 2.0, latents, lambda r: photos[r].copy(),
                                                np.arange(64), 60))
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
