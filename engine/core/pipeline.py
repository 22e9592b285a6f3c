"""From a file on disk to an editable session, the one path both the GUI and the CLI take."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from engine.core.attributes import AttributeSet
from engine.core.checkpoint import LoadedModel, load_model
from engine.core.faces import Face, find_faces, whole_image_face
from engine.core.images import Photo, load_photo
from engine.core.landmarks import default_refiner
from engine.core.session import EditSession


class NoFaceError(Exception):
    """No face was found; the message is for the user."""


@dataclass
class Engine:
    """A loaded model with its attribute directions, on one device."""

    loaded: LoadedModel
    attributes: AttributeSet
    device: torch.device

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] | None = None, device: str = "auto") -> Engine:
        dev = pick_device(device)
        loaded = load_model(model_dir, dev)
        attrs = AttributeSet.load(loaded.path, loaded.config.latent_dim)
        return cls(loaded, attrs, dev)

    def describe(self) -> dict[str, object]:
        cfg = self.loaded.config
        return {
            "resolution": cfg.resolution,
            "latent_dim": cfg.latent_dim,
            "latent_grid": list(cfg.grid),
            "device": str(self.device),
            "weights": str(self.loaded.path / "model.safetensors"),
            "model_id": self.loaded.model_id,
            "attributes": [a.name for a in self.attributes.visible() if a.kind == "named"],
            "latent_directions": [a.name for a in self.attributes.visible() if a.kind == "pca"],
            "attributes_failing_the_judge": [a.name for a in self.attributes.attributes if a.quality == "hidden"],
            "attributes_with_correlated_attributes_free": [
                a.name for a in self.attributes.attributes if a.kind == "named" and a.quality_in(False) != "hidden"],
        }


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU. An unusable explicit choice is an error."""
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but no CUDA GPU is available: use --device cpu")
    return dev


def refine_face(photo: Photo, face: Face) -> Face:
    """Sharpen the eye positions of a detected face with the landmark regressor, when shipped."""
    refiner = default_refiner()
    if refiner is None or face.manual:
        return face
    eyes = refiner.refine(photo.pixels, face.eyes)
    return Face(eyes=eyes, box=face.box, score=face.score, eyes_found=face.eyes_found)


def detect(photo: Photo) -> list[Face]:
    """Faces in the photo, best first, with refined eyes."""
    return [refine_face(photo, f) for f in find_faces(photo.pixels)]


def choose_face(photo: Photo, faces: list[Face], index: int | None = None, allow_whole: bool = True) -> Face:
    """The face to edit: ``index`` into ``faces``; with no faces, the whole image if allowed."""
    i = 0 if index is None else index
    if not faces:
        if i != 0:
            raise NoFaceError(f"{photo.name}: there is no face {i}: no face was found (face 0 is the whole image)")
        if allow_whole:
            return whole_image_face(*photo.size)
        raise NoFaceError(f"{photo.name}: no face was found; place the face box by hand")
    if not 0 <= i < len(faces):
        n = len(faces)
        found = "1 face was found, numbered 0" if n == 1 else f"{n} faces were found, numbered 0 to {n - 1}"
        raise NoFaceError(f"{photo.name}: there is no face {i}: {found}")
    return faces[i]


def open_session(engine: Engine, path: str | os.PathLike[str] | Photo, face_index: int | None = None,
                 faces: list[Face] | None = None) -> tuple[EditSession, list[Face]]:
    photo = path if isinstance(path, Photo) else load_photo(path)
    found = detect(photo) if faces is None else faces
    face = choose_face(photo, found, face_index)
    session = EditSession(engine.loaded, photo, face, engine.device, engine.attributes)
    return session, found
