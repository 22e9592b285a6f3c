"""The one loader: model weights as safetensors plus a JSON config. Nothing is unpickled.

A model folder holds:

    config.json          {"format_version": 1, "model": {ModelConfig}, ...,
                          "brush": {BrushRule fields} (optional: the brush settings chosen for
                          this model by `npe eval`; absent, the defaults)}
    model.safetensors    encoder.* and decoder.* tensors
    attributes.safetensors + attributes.json   (optional) attribute directions

Every way this can go wrong ends in a ``ModelError`` whose message says what is wrong
and how to fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.core.edit import BrushRule
from engine.core.images import atomic_write
from engine.core.model import FaceModel, ModelConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "pretrained"
FIX_HINT = "reinstall the program, or restore pretrained/ with `git checkout -- pretrained`"


class ModelError(Exception):
    """A model folder is missing, damaged or from another version; the message is for the user."""


@dataclass
class LoadedModel:
    model: FaceModel
    config: ModelConfig
    path: Path
    meta: dict[str, object] = field(default_factory=dict)
    # the brush settings chosen for this model (config.json's "brush"), or the defaults: how far
    # a stroke moves the latent depends on the decoder
    brush_rule: BrushRule = field(default_factory=BrushRule)

    @property
    def model_id(self) -> str:
        return str(self.meta.get("model_id", self.path.name))


def _brush_rule(meta: dict[str, object]) -> BrushRule:
    brush = meta.get("brush", {})
    if not isinstance(brush, dict):
        raise TypeError("'brush' must be an object of BrushRule fields")
    return BrushRule(**brush)


def default_model_dir() -> Path:
    return Path(os.environ.get("NPE_MODEL_DIR", DEFAULT_MODEL_DIR))


def read_config(model_dir: Path) -> dict[str, object]:
    path = model_dir / CONFIG_NAME
    if not path.exists():
        raise ModelError(f"model config {path} is missing: {FIX_HINT}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model config {path} is damaged ({e}): {FIX_HINT}") from None
    if not isinstance(meta, dict) or "format_version" not in meta or "model" not in meta:
        raise ModelError(f"model config {path} lacks format_version or model: {FIX_HINT}")
    version = meta["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"model format version {version} in {path} is newer than this program reads "
            f"({FORMAT_VERSION}): update the program"
        )
    return meta


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ModelError(f"model weights {path} are missing: {FIX_HINT}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"model weights {path} are damaged ({e}): {FIX_HINT}") from None


def load_model(model_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load encoder + decoder from a model folder (default: ``pretrained/``)."""
    d = Path(model_dir) if model_dir is not None else default_model_dir()
    if d.is_file():
        d = d.parent
    meta = read_config(d)
    try:
        cfg = ModelConfig.from_dict(meta["model"])  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ModelError(f"model config {d / CONFIG_NAME} is invalid ({e}): {FIX_HINT}") from None
    try:
        brush = _brush_rule(meta)
    except (TypeError, ValueError) as e:
        raise ModelError(f"model config {d / CONFIG_NAME}: its brush settings are invalid ({e}): {FIX_HINT}") from None
    tensors = read_tensors(d / WEIGHTS_NAME)
    model = FaceModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelError(
            f"model weights {d / WEIGHTS_NAME} lack {len(missing)} tensors (e.g. {missing[0]}) "
            f"that config.json describes: {FIX_HINT}"
        )
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ModelError(
                f"model weights {d / WEIGHTS_NAME}: {k} has shape {tuple(tensors[k].shape)} but "
                f"config.json implies {tuple(v.shape)}: {FIX_HINT}"
            )
        if tensors[k].dtype.is_floating_point and not torch.isfinite(tensors[k]).all():
            raise ModelError(f"model weights {d / WEIGHTS_NAME}: {k} holds NaN or infinite values: {FIX_HINT}")
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    model.eval().requires_grad_(False)
    model.to(device)
    return LoadedModel(model=model, config=cfg, path=d, meta=meta, brush_rule=brush)


def save_model(model: FaceModel, model_dir: str | os.PathLike[str], **meta: object) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (encoder + decoder only)."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, d / WEIGHTS_NAME)
    config = {"format_version": FORMAT_VERSION, "model": model.cfg.to_dict(), **meta}
    atomic_write(d / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return d
