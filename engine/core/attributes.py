"""Attribute directions in latent space: the sliders.

A slider value v moves the latent by ``v * step * direction``; ``direction`` is a unit
vector (the normal of a linear boundary learned on encoded, labelled faces) and ``step``
the distance from the average face without the attribute to the average face with it, so
+1 is "as much more as a typical face that has it". Unlabelled (principal) directions use
the spread of the encoded training faces along them, so +1 is one standard deviation.

Conditional editing: a direction can be made orthogonal to others (``hold``), so moving
"gray hair" does not also age the face, following InterFaceGAN.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

DIRECTIONS_FILE = "attributes.safetensors"
NAMES_FILE = "attributes.json"


# A slider runs from -SLIDER_RANGE to +SLIDER_RANGE steps (one step: the distance between the
# mean latents of faces with and without the attribute). Further out the 64-px decoder leaves
# the faces it knows (looked at: smiling at -2.4 turns the face grey and blotchy).
SLIDER_RANGE = 2.0


@dataclass
class Attribute:
    name: str
    label: str
    step: float
    quality: str = "good"  # "good" shows as a slider; "weak" is shown marked; "hidden" is not shown
    note: str = ""
    kind: str = "named"  # "named" (from labels) or "pca" (unlabelled direction)
    default_hold: tuple[str, ...] = ()
    quality_independent: str = ""  # the quality with the held attributes free ("": the same)

    def quality_in(self, conditional: bool) -> str:
        return self.quality if conditional or not self.quality_independent else self.quality_independent


@dataclass
class AttributeSet:
    attributes: list[Attribute]
    directions: torch.Tensor  # (K, D) unit rows
    hold: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> directions projected out

    @classmethod
    def empty(cls, latent_dim: int) -> AttributeSet:
        return cls([], torch.zeros(0, latent_dim))

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def latent_dim(self) -> int:
        return int(self.directions.shape[1])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown attribute {name!r}; known: {', '.join(self.names) or 'none'}") from None

    def get(self, name: str) -> Attribute:
        return self.attributes[self.index(name)]

    def check_value(self, name: str, value: float) -> None:
        """Raise ``ValueError`` (message for the user) unless ``value`` is a setting ``name``'s slider can take."""
        self.index(name)  # an unknown name is a KeyError that lists the known ones
        if not math.isfinite(value):
            raise ValueError(f"{name}={value}: a slider value must be a finite number")
        if abs(value) > SLIDER_RANGE:
            raise ValueError(f"{name}={value:g} is outside the slider's range, {-SLIDER_RANGE:g} to "
                             f"+{SLIDER_RANGE:g} (further out the model leaves the faces it knows)")

    def failed_the_judge(self, name: str) -> bool:
        """Whether ``name``'s slider failed the attribute judge in the current mode."""
        return self.get(name).quality_in(self.conditional) == "hidden"

    def held(self, name: str) -> tuple[str, ...]:
        """The attributes ``name``'s slider holds fixed in the current mode."""
        return self.hold.get(name, self.get(name).default_hold)

    def direction(self, name: str, hold: tuple[str, ...] | None = None) -> torch.Tensor:
        """The unit direction for ``name``, with the ``hold`` directions projected out."""
        d = self.directions[self.index(name)].clone()
        held = self.held(name) if hold is None else hold
        basis = [self.directions[self.index(h)] for h in held if h != name and h in self.names]
        if basis:
            q, _ = torch.linalg.qr(torch.stack(basis, 1))  # (D, k) orthonormal
            d = d - q @ (q.T @ d)
            n = d.norm()
            if n > 1e-6:
                d = d / n
        return d

    @property
    def conditional(self) -> bool:
        return not self.hold

    def set_conditional(self, on: bool) -> None:
        """On (default): each slider holds its correlated attributes fixed. Off: plain directions."""
        self.hold = {} if on else {a.name: () for a in self.attributes}

    def offset(self, values: dict[str, float]) -> torch.Tensor:
        """Sum of value * step * direction over the given sliders, shape (D,)."""
        out = torch.zeros(self.latent_dim)
        for name, v in values.items():
            if v:
                out += float(v) * self.get(name).step * self.direction(name)
        return out

    def visible(self) -> list[Attribute]:
        """The sliders that passed the judge in the current mode (conditional or not)."""
        return [a for a in self.attributes if a.quality_in(self.conditional) != "hidden"]

    # ---- files ---------------------------------------------------------------------
    def save(self, model_dir: Path, **meta: object) -> None:
        from safetensors.torch import save_file

        from engine.core.images import atomic_write

        model_dir.mkdir(parents=True, exist_ok=True)
        save_file({"directions": self.directions.float().contiguous()}, str(model_dir / DIRECTIONS_FILE))
        doc = {
            "format_version": 1,
            "latent_dim": self.latent_dim,
            "attributes": [
                {"name": a.name, "label": a.label, "step": a.step, "quality": a.quality, "note": a.note,
                 "kind": a.kind, "default_hold": list(a.default_hold), "quality_independent": a.quality_independent}
                for a in self.attributes
            ],
            **meta,
        }
        atomic_write(model_dir / NAMES_FILE, (json.dumps(doc, indent=2) + "\n").encode())

    @classmethod
    def load(cls, model_dir: Path, latent_dim: int) -> AttributeSet:
        """The directions shipped with a model; an empty set when it has none."""
        from engine.core.checkpoint import ModelError, read_tensors

        names_path = model_dir / NAMES_FILE
        if not names_path.exists():
            return cls.empty(latent_dim)
        try:
            doc = json.loads(names_path.read_text(encoding="utf-8"))
            attrs = [Attribute(name=a["name"], label=a.get("label", a["name"]), step=float(a["step"]),
                               quality=a.get("quality", "good"), note=a.get("note", ""), kind=a.get("kind", "named"),
                               default_hold=tuple(a.get("default_hold", ())),
                               quality_independent=a.get("quality_independent", ""))
                     for a in doc["attributes"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"attribute list {names_path} is damaged ({e})") from None
        dirs = read_tensors(model_dir / DIRECTIONS_FILE)
        if "directions" not in dirs:
            raise ModelError(f"{model_dir / DIRECTIONS_FILE} has no 'directions' tensor")
        d = dirs["directions"].float()
        if d.ndim != 2 or d.shape[0] != len(attrs) or d.shape[1] != latent_dim:
            raise ModelError(
                f"{model_dir / DIRECTIONS_FILE} holds directions of shape {tuple(d.shape)}, but the model has "
                f"latent size {latent_dim} and {NAMES_FILE} names {len(attrs)} attributes: recompute them with "
                "`npe attributes --data DIR`"
            )
        return cls(attrs, d)

    def describe(self) -> list[dict[str, object]]:
        return [{"name": a.name, "label": a.label, "quality": a.quality_in(self.conditional), "kind": a.kind}
                for a in self.attributes]


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
