"""Shared fixtures: tiny random models, small photos, an isolated config folder."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(min(2, torch.get_num_threads()))

from engine.core import checkpoint  # noqa: E402
from engine.core.attributes import Attribute, AttributeSet, SliderKind  # noqa: E402
from engine.core.model import FaceModel, ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
TINY = ModelConfig(resolution=32, latent_dim=16, decoder_channels=(16, 12, 8, 8), encoder_channels=(4, 8, 8),
                   discriminator_channels=(4, 8, 8))


def make_tiny_model(seed: int = 0) -> FaceModel:
    torch.manual_seed(seed)
    model = FaceModel(TINY)
    # default initialisation gives a nearly constant output; scale the decoder up so its
    # output depends on z as a trained one does
    with torch.no_grad():
        for m in model.decoder.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                torch.nn.init.normal_(m.weight, 0.0, 1.6 / (m.weight[0].numel() ** 0.5))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.fill_(1.0)  # residual branches start at zero in training; a trained one's are not
    return model.eval()


@pytest.fixture(autouse=True)
def _collect_garbage_here() -> Iterator[None]:
    """Collect each test's garbage on the main thread: the editor turns automatic collection
    off (see editor.main_window.collect_garbage_on_the_gui_thread)."""
    yield
    gc.collect()


PRETRAINED = str(ROOT / "pretrained") + os.sep
_pretrained_reads: list[str] = []
_watching = [False]


def _note_pretrained_reads(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _watching[0] and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(PRETRAINED):
            _pretrained_reads.append(path[len(PRETRAINED):])


sys.addaudithook(_note_pretrained_reads)


@pytest.fixture(autouse=True)
def _weights_marker_is_honest(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that reads anything in pretrained/ must be marked ``weights`` (so that
    ``pytest -m "not weights"`` really runs without the shipped model). The eye refiner's
    process-wide cache is emptied first, so every test that uses it is seen."""
    from engine.core import landmarks

    landmarks.load_refiner.cache_clear()
    _pretrained_reads.clear()
    _watching[0] = True
    yield
    _watching[0] = False
    if _pretrained_reads and request.node.get_closest_marker("weights") is None:
        pytest.fail(f"reads {sorted(set(_pretrained_reads))} from pretrained/ but is not marked weights")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPE_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random model with two attribute directions."""
    d = tmp_path_factory.mktemp("tiny-model")
    model = make_tiny_model()
    checkpoint.save_model(model, d, model_id="tiny-test")
    g = torch.Generator().manual_seed(3)
    dirs = torch.randn(3, TINY.latent_dim, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    AttributeSet([Attribute("smiling", "Smiling", 1.0, default_hold=("eyeglasses",)),
                  Attribute("eyeglasses", "Eyeglasses", 1.0, quality="weak"),
                  Attribute("pc1", "Latent direction 1", 2.0, kind=SliderKind.PRINCIPAL)], dirs).save(d)
    return d


CONDITIONED = dataclasses.replace(TINY, attributes=("Smiling", "Eyeglasses"))


@pytest.fixture(scope="session")
def tiny_conditioned_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random conditioned model G(z, a) whose attribute input matters, with two sliders
    on that input (smiling, eyeglasses) and one latent direction."""
    d = tmp_path_factory.mktemp("tiny-conditioned")
    torch.manual_seed(4)
    model = FaceModel(CONDITIONED)
    model.load_state_dict(make_tiny_model().state_dict(), strict=False)
    with torch.no_grad():
        for layer in [model.decoder.cond_fc, *model.decoder.cond_blocks]:
            torch.nn.init.normal_(layer.weight, 0.0, 0.8)
    checkpoint.save_model(model.eval(), d, model_id="tiny-conditioned")
    dirs = torch.zeros(3, TINY.latent_dim)
    dirs[2, 0] = 1.0
    condition = SliderKind.CONDITION
    AttributeSet([Attribute("smiling", "Smiling", 1.0, kind=condition, condition=0),
                  Attribute("eyeglasses", "Eyeglasses", 1.0, kind=condition, condition=1),
                  Attribute("pc1", "Latent direction 1", 2.0, kind=SliderKind.PRINCIPAL)], dirs).save(d)
    return d


@pytest.fixture
def engine(tiny_model_dir: Path):
    from engine.core.pipeline import Engine

    return Engine.load(tiny_model_dir, "cpu")


@pytest.fixture
def face_photo(tmp_path: Path) -> Path:
    """A small square 'face crop' photo (no face needs to be detected in it)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    img = np.stack([120 + 60 * np.sin(xx / 9), 100 + 50 * np.cos(yy / 7), 90 + 0 * xx], -1)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    from PIL import Image

    p = tmp_path / "face.png"
    Image.fromarray(img).save(p)
    return p


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(RESOURCES / "astronaut.png").convert("RGB"))


@pytest.fixture
def brush_moves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A spy on the brush: how many mouse samples each latent update took (in order)."""
    from engine.core.session import EditSession

    moves: list[int] = []
    real = EditSession.brush_to

    def counted(self: EditSession, points: list[tuple[float, float]]) -> object:
        moves.append(len(points))
        return real(self, points)

    monkeypatch.setattr(EditSession, "brush_to", counted)
    return moves


@pytest.fixture
def model_with_a_failed_slider(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model, with its eyeglasses slider marked as failing the judge."""
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    doc = json.loads((d / "attributes.json").read_text())
    for a in doc["attributes"]:
        if a["name"] == "eyeglasses":
            a["quality"] = "hidden"
    (d / "attributes.json").write_text(json.dumps(doc))
    return d
