"""The document: one photo, its faces, and an edit session per face, and its file (``.npe``).

A photo with several faces has each edited in turn: choosing another face keeps the edits of
the one before (``Document.choose``), and the photo shown and exported carries every face's
edits (``Document.composite``). Undo works per face.

A session file is a zip archive:

    session.json         format version, model id, photo name, faces, chosen face, and per
                         edited face its slider values and hold mode per undo step and its
                         undo position
    photo.<ext>          the original photo file, byte for byte
    latents.safetensors  per edited face z0 (the encoding) and the undo history's latents

Reopening decodes the same bytes, re-applies the same alignment and starts from the
stored z0, so the image is the same as when it was saved. A session written with
another model is refused (its latents mean nothing to a different decoder).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from engine.core.attributes import AttributeSet, SliderValues
from engine.core.checkpoint import LoadedModel
from engine.core.detail import HairDetail
from engine.core.faces import Face
from engine.core.images import ImageError, Photo, atomic_write, decode_photo
from engine.core.session import EditSession, Snapshot

# 2: each undo step records whether sliders held correlated attributes fixed ("hold");
#    version 1 files, written before the mode was part of the edit, read as held (the default)
# 3: every edited face's history ("edits"); versions 1 and 2 held the chosen face's alone
# 4: a step may hold the brush's move of a conditioned decoder's attributes ("brush_attributes");
#    earlier files have none (the brush moved z alone)
SESSION_FORMAT = 4


class SessionError(ImageError):
    """A session file cannot be opened; the message is for the user."""


WHOLE_IMAGE = -1  # the key of the session that edits the whole image when no face was found


@dataclass
class Document:
    """A photo, the faces found (or placed) in it, and an edit session per face worked on
    (``WHOLE_IMAGE``: the image read as one face, when none was found)."""

    photo: Photo
    faces: list[Face]
    sessions: dict[int, EditSession]
    face_index: int
    model: LoadedModel
    device: torch.device
    attributes: AttributeSet
    hair_detail: HairDetail | None = None
    _below: tuple[object, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, session: EditSession, faces: list[Face], face_index: int) -> Document:
        """The document of one session (of the whole image when its face is not among ``faces``)."""
        key = face_index if session.face in faces else WHOLE_IMAGE
        return cls(session.photo, list(faces), {key: session}, key, session.model, session.device,
                   session.attributes, session.hair_detail)

    @property
    def current(self) -> EditSession:
        return self.sessions[self.face_index]

    def choose(self, index: int) -> EditSession:
        """Edit face ``index`` next; the faces edited before keep their edits."""
        if not (0 <= index < len(self.faces) or index in self.sessions):
            raise ValueError(f"there is no face {index}")
        if index not in self.sessions:
            self.sessions[index] = EditSession(self.model, self.photo, self.faces[index], self.device,
                                               self.attributes, hair_detail=self.hair_detail)
        self.face_index = index
        return self.sessions[index]

    def add_face(self, face: Face) -> EditSession:
        """A face placed by hand becomes the one edited."""
        self.faces.append(face)
        return self.choose(len(self.faces) - 1)

    @property
    def edited(self) -> bool:
        return any(s.edited for s in self.sessions.values())

    def others(self, below: bool) -> list[EditSession]:
        """The edited sessions of the other faces that come before (``below``) or after the
        current one: faces are pasted in the order of their numbers, whichever is being edited."""
        return [s for i, s in sorted(self.sessions.items())
                if (i < self.face_index if below else i > self.face_index) and s.edited]

    def composite(self, pixels: np.ndarray | None = None, scale: float = 1.0,
                  result: object | None = None, detail: bool = False) -> np.ndarray:
        """The photo (or a copy resized by ``scale``) with every face's edits (``detail``: with
        strands where a stroke grew hair, ``EditSession.composite``). The faces pasted before the
        current one are kept while they and the picture size stay the same."""
        base = self.photo.pixels if pixels is None else pixels
        below = self.others(below=True)
        if below:
            key = (id(base), base.shape, scale, detail, tuple(s.version for s in below))
            if self._below is None or self._below[0] != key:
                layered = base
                for s in below:
                    layered = s.composite(layered, scale, detail=detail)
                self._below = (key, layered)
            base = self._below[1]
        out = self.current.composite(base, scale, result, detail)  # type: ignore[arg-type]
        for s in self.others(below=False):
            out = s.composite(out, scale, detail=detail)
        return out

    def to(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        for s in self.sessions.values():
            s.to(self.device)


def document_bytes(doc: Document) -> bytes:
    photo = doc.photo
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}.get(
        photo.format.upper(), "img")
    photo_file = f"photo.{ext}"
    edits, tensors = [], {}
    for j, (face, s) in enumerate(sorted(doc.sessions.items())):
        edits.append({"face": face, "face_box": s.face.to_dict(digits=None), "position": s.position,
                      "history": [{"sliders": [[k, v] for k, v in snap.sliders.items], "hold": snap.hold}
                                  for snap in s.history]})
        tensors[f"edit{j}.z0"] = s.z0[0].detach().cpu().contiguous()
        for i, snap in enumerate(s.history):
            tensors[f"edit{j}.history.{i}"] = torch.from_numpy(snap.z_base.copy())
            if snap.reach is not None:  # where the strokes' change shows (absent: everywhere)
                tensors[f"edit{j}.reach.{i}"] = torch.from_numpy(snap.reach.copy())
            if snap.brush_attributes is not None:  # the brush's move of a conditioned decoder's attributes
                tensors[f"edit{j}.brush_attributes.{i}"] = torch.from_numpy(snap.brush_attributes.copy())
    meta = {
        "format_version": SESSION_FORMAT,
        "model_id": doc.model.model_id,
        "latent_dim": doc.model.config.latent_dim,
        "photo_name": photo.name,
        "photo_file": photo_file,
        "faces": [f.to_dict(digits=None) for f in doc.faces],
        "face_index": doc.face_index,
        "edits": edits,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("session.json", json.dumps(meta, indent=2))
        z.writestr(photo_file, photo.file_bytes)
        z.writestr("latents.safetensors", st_save(tensors))
    return buf.getvalue()


def save_document(doc: Document, path: str | Path) -> None:
    """Write a document atomically (the old file stays intact if writing fails)."""
    atomic_write(path, document_bytes(doc))


def save_session(session: EditSession, path: str | Path, faces: list[Face], face_index: int) -> None:
    """Write one face's session as a document."""
    save_document(Document.of(session, faces, face_index), path)


def read_session(data: bytes, name: str = "session") -> tuple[dict[str, Any], bytes, dict[str, torch.Tensor]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            meta = json.loads(z.read("session.json"))
            photo_bytes = z.read(meta["photo_file"])
            tensors = st_load(z.read("latents.safetensors"))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as e:
        raise SessionError(f"{name}: not a readable session file ({e})") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise SessionError(f"{name}: the session's latents are damaged ({e})") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > SESSION_FORMAT:
        raise SessionError(f"{name}: session format {version} is newer than this program reads: update it")
    return meta, photo_bytes, tensors


def _history(edit: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str, resolution: int,
             n_attributes: int) -> list[Snapshot]:
    """The undo history of one face's edit. A step without a reach (sessions saved before strokes
    were kept local) shows its change everywhere, as it did when it was made."""
    history = []
    for i, h in enumerate(edit["history"]):
        stored = tensors.get(f"{prefix}reach.{i}")
        reach = None
        if stored is not None:
            if tuple(stored.shape) != (resolution, resolution):
                raise ValueError(f"step {i}'s reach has shape {tuple(stored.shape)}")
            reach = stored.numpy().astype(np.float32).clip(0, 1)
        moved = tensors.get(f"{prefix}brush_attributes.{i}")  # absent: saved before the brush moved them
        if moved is not None and (tuple(moved.shape) != (n_attributes,) or not torch.isfinite(moved).all()):
            raise ValueError(f"step {i}'s brushed attributes have shape {tuple(moved.shape)} (the model has "
                             f"{n_attributes} attributes) or are not finite")
        history.append(Snapshot(tensors[f"{prefix}history.{i}"].numpy().astype(np.float32),
                                SliderValues(tuple((str(k), float(v)) for k, v in h["sliders"])),
                                bool(h.get("hold", True)), reach,
                                None if moved is None else moved.numpy().astype(np.float32)))
    return history


def load_document(engine: Any, path: str | Path) -> Document:
    """Reopen a document with ``engine`` (a ``pipeline.Engine``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SessionError(f"{p.name}: could not be read ({e.strerror or e})") from None
    meta, photo_bytes, tensors = read_session(data, p.name)
    loaded = engine.loaded
    if meta.get("model_id") != loaded.model_id or meta.get("latent_dim") != loaded.config.latent_dim:
        raise SessionError(
            f"{p.name} was made with model {meta.get('model_id')!r}, but this program runs "
            f"{loaded.model_id!r}; its edits cannot be replayed on another model. Open the photo instead."
        )
    photo = decode_photo(photo_bytes, str(meta.get("photo_name", p.stem)))
    try:
        faces = [Face.from_dict(f) for f in meta["faces"]]
        face_index = int(meta["face_index"])
        if meta["format_version"] < 3:  # one face's edit, kept at the top level
            edits = [({"face": face_index, "history": meta["history"], "position": meta["position"]}, "")]
        else:
            edits = [(e, f"edit{j}.") for j, e in enumerate(meta["edits"])]
        sessions = {}
        for edit, prefix in edits:
            history = _history(edit, tensors, prefix, loaded.config.resolution, len(loaded.config.attributes))
            position = int(edit["position"])
            if not 0 <= position < len(history):
                raise ValueError("undo position out of range")
            face = int(edit["face"])
            where = Face.from_dict(edit["face_box"]) if face == WHOLE_IMAGE else faces[face]
            s = EditSession(loaded, photo, where, engine.device, engine.attributes,
                            z0=tensors[f"{prefix}z0"].numpy(), hair_detail=engine.detail)
            s.history = history
            s.position = position
            s.restore(history[position])
            sessions[face] = s
        if face_index not in sessions:
            faces[face_index]  # noqa: B018 - the chosen face must exist
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise SessionError(f"{p.name}: the session's contents are damaged ({e})") from None
    doc = Document(photo, faces, sessions, face_index, loaded, engine.device, engine.attributes, engine.detail)
    doc.choose(face_index)
    return doc


def load_session(engine: Any, path: str | Path) -> tuple[EditSession, list[Face], int]:
    """Reopen a document; returns the chosen face's session, the faces and the chosen face."""
    doc = load_document(engine, path)
    return doc.current, doc.faces, doc.face_index
