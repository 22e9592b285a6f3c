"""One model folder and every artefact in it, found in one place.

    config.json + model.safetensors            the face model (engine.core.checkpoint)
    attributes.json + attributes.safetensors   the slider directions (engine.core.attributes)
    judge.json + judge.safetensors             the attribute judge (engine.core.judge)
    landmarks.json + landmarks.safetensors     the eye refiner (engine.core.landmarks)
    detail.json + detail.safetensors           the hair detail network (engine.core.detail)

``ModelFolder.find`` applies the one rule for which folder: the one asked for (``--weights``),
else ``NPE_MODEL_DIR``, else ``pretrained/``. Everything is read from that folder, so a
folder asked for is used whole; an artefact it lacks is absent (no sliders, no judge, the
face cascade alone), never taken silently from another folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.core import checkpoint, detail, judge, landmarks
from engine.core.attributes import DIRECTIONS_FILE, NAMES_FILE, AttributeSet
from engine.core.checkpoint import LoadedModel


@dataclass(frozen=True)
class ModelFolder:
    path: Path

    @classmethod
    def find(cls, where: str | os.PathLike[str] | ModelFolder | None = None) -> ModelFolder:
        if isinstance(where, ModelFolder):
            return where
        d = Path(where) if where else checkpoint.default_model_dir()
        return cls(d.parent if d.is_file() else d)

    # ---- the files ---------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / checkpoint.CONFIG_NAME

    @property
    def weights_file(self) -> Path:
        return self.path / checkpoint.WEIGHTS_NAME

    @property
    def attributes_file(self) -> Path:
        return self.path / NAMES_FILE

    @property
    def directions_file(self) -> Path:
        return self.path / DIRECTIONS_FILE

    @property
    def judge_file(self) -> Path:
        return self.path / judge.WEIGHTS

    @property
    def landmarks_file(self) -> Path:
        return self.path / landmarks.WEIGHTS

    @property
    def detail_file(self) -> Path:
        return self.path / detail.WEIGHTS

    # ---- the artefacts -------------------------------------------------------------------
    def load_model(self, device: str | torch.device = "cpu") -> LoadedModel:
        return checkpoint.load_model(self.path, device)

    def load_attributes(self, latent_dim: int) -> AttributeSet:
        return AttributeSet.load(self.path, latent_dim)

    def load_judge(self) -> tuple[judge.AttributeJudge, list[str]]:
        return judge.load_judge(self.path)

    def load_refiner(self) -> landmarks.EyeRefiner | None:
        """The eye refiner shipped in this folder, or None (the face cascade alone is used)."""
        return landmarks.load_refiner(self.landmarks_file)

    def load_detail(self) -> detail.HairDetail | None:
        """The hair detail network shipped in this folder, or None (strokes add no strands)."""
        return detail.load_detail(self.detail_file)

    def describe(self) -> dict[str, object]:
        return {"folder": str(self.path), "weights": str(self.weights_file),
                "eye_refiner": str(self.landmarks_file) if self.landmarks_file.exists() else None,
                "judge": str(self.judge_file) if self.judge_file.exists() else None,
                "hair_detail": str(self.detail_file) if self.detail_file.exists() else None}
