"""The attribute judge: a small CNN that reads the 40 CelebA attributes from an aligned crop.

It is trained on real photos only (``npe attributes``, engine.tools.attribute_learning) and
scores how well each slider adds its attribute. It is never a training loss of the face
model: the evaluation stays independent of what the model was optimised for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.core.checkpoint import ModelError, read_tensors
from engine.core.images import atomic_write, resized

WEIGHTS = "judge.safetensors"
META = "judge.json"
# Judges saved before judge.json named a resolution were all trained on 64-px crops.
RESOLUTION_BEFORE_NAMED = 64


class AttributeJudge(nn.Module):
    """A small CNN that predicts the 40 CelebA attributes from an aligned crop in [-1, 1] of
    ``resolution`` pixels (the size it was trained on; other crops are resized to it)."""

    def __init__(self, n_out: int = 40, width: int = 32, resolution: int = RESOLUTION_BEFORE_NAMED) -> None:
        super().__init__()
        self.resolution = resolution
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))  # logits (N, n_out)


def judge_scores(judge: AttributeJudge, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """Probabilities (N, 40) for images (N, 3, R, R) in [-1, 1], read at the judge's own
    resolution (its filters only know faces of that size)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(torch.sigmoid(judge(resized(images[i:i + batch], judge.resolution))))
    return torch.cat(out)


def save_judge(judge: AttributeJudge, model_dir: Path, names: list[str], accuracy: dict[str, float]) -> None:
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(model_dir / WEIGHTS))
    atomic_write(model_dir / META, (json.dumps(
        {"format_version": 1, "attribute_names": names, "resolution": judge.resolution, "held_out_accuracy": accuracy},
        indent=2) + "\n").encode())


def load_judge(model_dir: Path) -> tuple[AttributeJudge, list[str]]:
    meta_path = model_dir / META
    if not meta_path.exists():
        raise ModelError(f"{meta_path} is missing: run `npe attributes --data DIR` to train the judge")
    meta = json.loads(meta_path.read_text())
    names = meta["attribute_names"]
    judge = AttributeJudge(len(names), resolution=int(meta.get("resolution", RESOLUTION_BEFORE_NAMED)))
    judge.load_state_dict(read_tensors(model_dir / WEIGHTS))
    return judge.eval(), names
