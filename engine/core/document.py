"""Session files (``.npe``): everything needed to reopen an edit exactly.

A session file is a zip archive:

    session.json         format version, model id, photo name, faces, chosen face,
                         slider values and hold mode per undo step, undo position
    photo.<ext>          the original photo file, byte for byte
    latents.safetensors  z0 (the encoding), and the undo history's latents

Reopening decodes the same bytes, re-applies the same alignment and starts from the
stored z0, so the image is the same as when it was saved. A session written with
another model is refused (its latents mean nothing to a different decoder).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from engine.core.attributes import SliderValues
from engine.core.faces import Face
from engine.core.images import ImageError, atomic_write, decode_photo
from engine.core.session import EditSession, Snapshot

# 2: each undo step records whether sliders held correlated attributes fixed ("hold");
#    version 1 files, written before the mode was part of the edit, read as held (the default)
SESSION_FORMAT = 2


class SessionError(ImageError):
    """A session file cannot be opened; the message is for the user."""


def session_bytes(session: EditSession, faces: list[Face], face_index: int) -> bytes:
    photo = session.photo
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}.get(
        photo.format.upper(), "img")
    face = session.face
    all_faces = list(faces)
    if face not in all_faces:
        all_faces.append(face)
        face_index = len(all_faces) - 1
    photo_file = f"photo.{ext}"
    meta = {
        "format_version": SESSION_FORMAT,
        "model_id": session.model.model_id,
        "latent_dim": session.latent_dim,
        "photo_name": photo.name,
        "photo_file": photo_file,
        "faces": [f.to_dict() for f in all_faces],
        "face_index": face_index,
        "history": [{"sliders": [[k, v] for k, v in snap.sliders.items], "hold": snap.hold}
                    for snap in session.history],
        "position": session.position,
    }
    tensors = {"z0": session.z0[0].detach().cpu().contiguous()}
    for i, snap in enumerate(session.history):
        tensors[f"history.{i}"] = torch.from_numpy(snap.z_base.copy())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("session.json", json.dumps(meta, indent=2))
        z.writestr(photo_file, photo.file_bytes)
        z.writestr("latents.safetensors", st_save(tensors))
    return buf.getvalue()


def save_session(session: EditSession, path: str | Path, faces: list[Face], face_index: int) -> None:
    """Write a session atomically (the old file stays intact if writing fails)."""
    atomic_write(path, session_bytes(session, faces, face_index))


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


def load_session(engine: object, path: str | Path) -> tuple[EditSession, list[Face], int]:
    """Reopen a session with ``engine`` (a ``pipeline.Engine``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SessionError(f"{p.name}: could not be read ({e.strerror or e})") from None
    meta, photo_bytes, tensors = read_session(data, p.name)
    loaded = engine.loaded  # type: ignore[attr-defined]
    if meta.get("model_id") != loaded.model_id or meta.get("latent_dim") != loaded.config.latent_dim:
        raise SessionError(
            f"{p.name} was made with model {meta.get('model_id')!r}, but this program runs "
            f"{loaded.model_id!r}; its edits cannot be replayed on another model. Open the photo instead."
        )
    photo = decode_photo(photo_bytes, str(meta.get("photo_name", p.stem)))
    try:
        faces = [Face.from_dict(f) for f in meta["faces"]]
        face_index = int(meta["face_index"])
        face = faces[face_index]
        history_meta = list(meta["history"])
        position = int(meta["position"])
        z0 = tensors["z0"].numpy()
        history = [
            Snapshot(tensors[f"history.{i}"].numpy().astype(np.float32),
                     SliderValues(tuple((str(k), float(v)) for k, v in h["sliders"])), bool(h.get("hold", True)))
            for i, h in enumerate(history_meta)
        ]
        if not 0 <= position < len(history):
            raise ValueError("undo position out of range")
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise SessionError(f"{p.name}: the session's contents are damaged ({e})") from None
    session = EditSession(loaded, photo, face, engine.device, engine.attributes, z0=z0)  # type: ignore[attr-defined]
    session.history = history
    session.position = position
    session.restore(history[position])
    return session, faces, face_index
