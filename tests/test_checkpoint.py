"""The one model loader: round trips and every way a model folder can be broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.core import checkpoint
from engine.core.checkpoint import ModelError, load_model
from tests.conftest import TINY, make_tiny_model


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = make_tiny_model(5)
    checkpoint.save_model(model, tmp_path / "m", model_id="x")
    loaded = load_model(tmp_path / "m")
    z = torch.randn(2, TINY.latent_dim)
    x = torch.rand(2, 3, TINY.resolution, TINY.resolution) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.model.decode(z), model.decode(z))
        assert torch.equal(loaded.model.encode(x), model.encode(x))
    assert loaded.config == TINY
    assert loaded.model_id == "x"
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_missing_files(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ModelError, match="config.*missing"):
        load_model(tmp_path)
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="weights.*missing"):
        load_model(d)


def test_truncated_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = _copy(tiny_model_dir, tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="damaged"):
        load_model(d)


def test_altered_weights_with_nan(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_model_dir, tmp_path / "m")
    t = load_file(d / "model.safetensors")
    t["decoder.fc.weight"][0, 0] = float("nan")
    save_file(t, d / "model.safetensors")
    with pytest.raises(ModelError, match="NaN"):
        load_model(d)


def test_config_that_does_not_match_the_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = _copy(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["decoder_channels"][0] = 20
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="shape"):
        load_model(d)


def test_future_format_version(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = _copy(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="newer"):
        load_model(d)


@pytest.mark.parametrize("brush", [{"lr": 0.05}, {"rate": 0.05}, {"kind": "sgd"}, [0.05]])
def test_a_model_brings_its_own_brush_settings(tmp_path: Path, tiny_model_dir: Path, brush: object) -> None:
    """How far a stroke moves the latent is chosen per model (config.json 'brush'); a session
    brushes with it unless told otherwise, and a wrong entry is a clear error, not a crash."""
    import numpy as np

    from engine.core.edit import BrushRule
    from engine.core.faces import whole_image_face
    from engine.core.images import Photo
    from engine.core.session import EditSession

    assert load_model(tiny_model_dir).brush_rule == BrushRule()  # none named: the defaults
    d = _copy(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["brush"] = brush
    (d / "config.json").write_text(json.dumps(cfg))
    if brush != {"lr": 0.05}:
        with pytest.raises(ModelError, match="brush settings are invalid"):
            load_model(d)
        return
    loaded = load_model(d)
    r = TINY.resolution
    photo = Photo(np.full((r, r, 3), 128, np.uint8))
    assert EditSession(loaded, photo, whole_image_face(r, r)).rule == BrushRule(lr=0.05)
    told = BrushRule("sgd2016")
    assert EditSession(loaded, photo, whole_image_face(r, r), rule=told).rule == told


def test_garbage_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        load_model(d)


def test_weights_are_never_unpickled(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A pickle disguised as the weights file is rejected, not executed."""
    import pickle

    d = _copy(tiny_model_dir, tmp_path / "m")

    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (tmp_path / "pwned",))

    (d / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelError):
        load_model(d)
    assert not (tmp_path / "pwned").exists()
