"""From a file on disk to an editable session, the one path both the GUI and the CLI take."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from engine.core.attributes import AttributeSet, SliderKind
from engine.core.checkpoint import LoadedModel
from engine.core.detail import HairDetail
from engine.core.device import pick_device
from engine.core.faces import Face, find_faces, whole_image_face
from engine.core.images import Photo, load_photo
from engine.core.landmarks import EyeRefiner
from engine.core.model_folder import ModelFolder
from engine.core.session import EditSession


def _judged(quality: str) -> str:
    """How `npe info` names a slider's judged quality: good, weak or failing (hidden in the editor)."""
    return "failing" if quality == "hidden" else quality


class NoFaceError(Exception):
    """No face was found; the message is for the user."""


@dataclass
class Engine:
    """Everything a model folder holds that editing needs, loaded on one device."""

    folder: ModelFolder
    loaded: LoadedModel
    attributes: AttributeSet
    refiner: EyeRefiner | None
    device: torch.device
    detail: HairDetail | None = None  # strands where a stroke grows hair (None: the pass is skipped)

    @classmethod
    def load(cls, where: str | os.PathLike[str] | ModelFolder | None = None, device: str = "auto") -> Engine:
        folder = ModelFolder.find(where)
        dev = pick_device(device)
        loaded = folder.load_model(dev)
        return cls(folder, loaded, folder.load_attributes(loaded.config.latent_dim), folder.load_refiner(), dev,
                   folder.load_detail())

    def describe(self) -> dict[str, object]:
        cfg = self.loaded.config
        return {
            "resolution": cfg.resolution,
            "latent_dim": cfg.latent_dim,
            "latent_grid": list(cfg.grid),
            "device": str(self.device),
            "model_id": self.loaded.model_id,
            **self.folder.describe(),
            "sliders": [{"name": a.name, "label": a.label, "kind": a.kind.value, "quality": _judged(a.quality_in(True)),
                         "quality_with_correlated_attributes_free": _judged(a.quality_in(False))}
                        for a in self.attributes.attributes],
            "attributes": [a.name for a in self.attributes.of_kind(SliderKind.DIRECTION)],
            "latent_directions": [a.name for a in self.attributes.of_kind(SliderKind.PRINCIPAL)],
            "attributes_failing_the_judge": [a.name for a in self.attributes.attributes if a.quality == "hidden"],
            "attributes_with_correlated_attributes_free": [
                a.name for a in self.attributes.of_kind(SliderKind.DIRECTION, hold=False)],
        }


def refine_face(photo: Photo, face: Face, refiner: EyeRefiner | None) -> Face:
    """Sharpen the eye positions of a detected face with the landmark regressor, when there is one."""
    if refiner is None or face.manual:
        return face
    eyes = refiner.refine(photo.pixels, face.eyes)
    return Face(eyes=eyes, box=face.box, score=face.score, eyes_found=face.eyes_found)


def detect(photo: Photo, refiner: EyeRefiner | None) -> list[Face]:
    """Faces in the photo, best first, with refined eyes."""
    return [refine_face(photo, f, refiner) for f in find_faces(photo.pixels)]


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
    found = detect(photo, engine.refiner) if faces is None else faces
    face = choose_face(photo, found, face_index)
    session = EditSession(engine.loaded, photo, face, engine.device, engine.attributes, hair_detail=engine.detail)
    return session, found
