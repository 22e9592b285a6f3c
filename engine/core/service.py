"""The edit service: the loaded engine and the open document, answering typed requests.

A front end (the editor's worker thread, a test, a script) hands ``EditService.handle`` one
request at a time (``engine.core.requests``); the request's type picks its handler from one
table, ``EditService.handlers``. A handler changes the document and says whether the picture
may have changed; ``frame`` then renders the view the front end last asked for (``View``).
Answers that are not pictures (opened, progress, done, thumbnails) go out through ``emit``.
Qt-free: nothing here waits on a window, and every failure is an exception the caller turns
into a message (``failure``).

Where a brush stroke goes: ``StrokeBegin`` -> ``_stroke_begin`` -> ``EditSession.brush_begin``;
``StrokeMove`` -> ``_stroke_move`` -> ``EditSession.brush_to`` (the preview is kept for the
next ``frame``); while the stroke is held still, the worker's ``StrokeSettle`` ->
``_stroke_settle`` -> ``EditSession.brush_settle`` (the release's steps, taken early);
``StrokeEnd`` -> ``_stroke_end`` -> ``EditSession.brush_end`` (one undo step).
A slider move: ``SetSliders`` -> ``_set_sliders`` -> ``EditSession.set_sliders`` (+ ``commit``
on release) -> ``frame`` -> ``EditSession.render``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from engine.core import requests as rq
from engine.core.attributes import SliderKind
from engine.core.checkpoint import ModelError
from engine.core.device import failure_note, is_device_failure
from engine.core.document import Document, load_document, save_document
from engine.core.edit import render_shift
from engine.core.faces import Face, face_from_rect
from engine.core.images import ImageError, save_image, to_uint8
from engine.core.pipeline import Engine, NoFaceError, open_session
from engine.core.session import CropRender, EditSession, fit_scale, to_255

log = logging.getLogger(__name__)
Emit = Callable[[object], None]

# failures that are the user's situation (a bad file, a full disk), told as they are;
# anything else is a bug, logged with its traceback and told as an internal error
RECOVERABLE = (ImageError, ModelError, NoFaceError, ValueError, KeyError, OSError)
STRIP_VALUES = (-2.0, -1.0, 0.0, 1.0, 2.0)  # the thumbnails of each principal direction
STRIP_SIZE = 48


def face_info(face: Face) -> rq.FaceInfo:
    return rq.FaceInfo(box=tuple(map(tuple, face.box.tolist())), eyes=tuple(map(tuple, face.eyes.tolist())),
                       manual=face.manual)


class EditService:
    def __init__(self, engine: Engine, emit: Emit) -> None:
        self.engine = engine
        self.emit = emit
        self.document: Document | None = None
        self.generation = 0
        self.view = rq.View()
        self._display: tuple[float, np.ndarray] | None = None  # (scale, the photo resized to the view)
        self._stroke_preview: CropRender | None = None  # the last brush step's picture, for the next frame
        self._autosaved: tuple[tuple[int, ...], ...] | None = None
        self.handlers: dict[type[rq.Request], Callable[[Any], bool]] = {
            rq.View: self._set_view,
            rq.OpenPhoto: self._open_photo,
            rq.OpenSession: self._open_session,
            rq.ChooseFace: self._choose_face,
            rq.PlaceFace: self._place_face,
            rq.StrokeBegin: self._stroke_begin,
            rq.StrokeMove: self._stroke_move,
            rq.StrokeEnd: self._stroke_end,
            rq.StrokeSettle: self._stroke_settle,
            rq.SetSliders: self._set_sliders,
            rq.SetHold: self._set_hold,
            rq.SetLatent: self._set_latent,
            rq.Undo: lambda r: self._need_session().undo(),
            rq.Redo: lambda r: self._need_session().redo(),
            rq.Reset: self._reset,
            rq.Sample: self._sample,
            rq.Export: self._export,
            rq.SaveSession: self._save_session,
        }

    # ---- requests ----------------------------------------------------------------------
    def handle(self, req: rq.Request) -> bool:
        """Carry out one request; returns whether the picture may have changed. A GPU failure
        moves the engine and the document to the CPU, says so, and carries the request out there."""
        try:
            return self._dispatch(req)
        except Exception as e:
            if not is_device_failure(e):
                raise
            self.fall_back_to_cpu(e)
            return self._dispatch(req)

    def _dispatch(self, req: rq.Request) -> bool:
        self.generation = max(self.generation, req.generation)
        handler = self.handlers.get(type(req))
        if handler is None:
            raise ValueError(f"unknown request {type(req).__name__}")
        return handler(req)

    def failure(self, req: rq.Request, e: Exception) -> rq.Failed:
        """The message for a request that failed; a stroke in progress is dropped."""
        if isinstance(e, RECOVERABLE):
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        else:
            log.error("engine error on %s:\n%s", type(req).__name__, traceback.format_exc())
            msg = f"internal error while handling {type(req).__name__}: {type(e).__name__}: {e}"
        if self.session is not None and self.session.stroke is not None:
            self.session.cancel_stroke()
        return rq.Failed(req.id, msg, type(req).__name__)

    def fall_back_to_cpu(self, error: BaseException) -> None:
        cpu = torch.device("cpu")
        self.engine.loaded.model.to(cpu)
        self.engine.device = cpu
        if self.document is not None:
            self.document.to(cpu)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.emit(rq.Failed(0, failure_note(error), "Device"))
        self.emit(self.ready())

    @property
    def session(self) -> EditSession | None:
        """The session of the face being edited."""
        return self.document.current if self.document is not None else None

    @property
    def faces(self) -> list[Face]:
        return self.document.faces if self.document is not None else []

    @property
    def face_index(self) -> int:
        return self.document.face_index if self.document is not None else 0

    def ready(self) -> rq.Ready:
        return rq.Ready(self.engine.describe(), self.engine.attributes.sliders())

    def _need_session(self) -> EditSession:
        return self._need_document().current

    # ---- the document --------------------------------------------------------------------
    def _set_view(self, req: rq.View) -> bool:
        if (req.width, req.height) != (self.view.width, self.view.height):
            self._display = None
        self.view = req
        return True

    def _install(self, document: Document) -> None:
        self.document = document
        self._display = None
        self._autosaved = None

    def _opened(self, req: rq.OpenPhoto | rq.OpenSession, ms: float) -> bool:
        s = self._need_session()
        self.emit(rq.Opened(req.id, req.generation, s.photo.name, req.path, s.photo.size,
                            tuple(face_info(f) for f in self.faces), self.face_index, not self.faces, ms))
        self.emit_thumbnails()
        return True

    def _open_photo(self, req: rq.OpenPhoto) -> bool:
        self.emit(rq.Progress(req.id, f"opening {Path(req.path).name}..."))
        t0 = time.perf_counter()
        session, faces = open_session(self.engine, req.path, req.face)
        self._install(Document.of(session, faces, req.face or 0))
        return self._opened(req, (time.perf_counter() - t0) * 1000)

    def _open_session(self, req: rq.OpenSession) -> bool:
        t0 = time.perf_counter()
        self._install(load_document(self.engine, req.path))
        return self._opened(req, (time.perf_counter() - t0) * 1000)

    def _need_document(self) -> Document:
        if self.document is None:
            raise ValueError("no photo is open")
        return self.document

    def _choose_face(self, req: rq.ChooseFace) -> bool:
        """Edit another face; the edits of the faces before stay (in the picture and in exports)."""
        self._need_document().choose(req.index)
        self.emit_thumbnails()
        return True

    def _place_face(self, req: rq.PlaceFace) -> bool:
        doc = self._need_document()
        x0, y0, x1, y1 = req.rect
        if min(abs(x1 - x0), abs(y1 - y0)) < 8:
            raise ValueError("the face box is too small: drag a box around the whole face")
        doc.add_face(face_from_rect(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        self.emit_thumbnails()
        return True

    # ---- edits -------------------------------------------------------------------------------
    def _stroke_begin(self, req: rq.StrokeBegin) -> bool:
        self._need_session().brush_begin(req.color, req.radius, req.strength)
        return False

    def _stroke_move(self, req: rq.StrokeMove) -> bool:
        s = self._need_session()
        if s.stroke is None:
            return False
        self._stroke_preview = s.brush_to(list(req.points))
        return True

    def _stroke_settle(self, req: rq.StrokeSettle) -> bool:
        s = self._need_session()
        preview = s.brush_settle()
        if preview is None:
            return False
        self._stroke_preview = preview
        return True

    def can_settle(self) -> bool:
        """Whether a stroke is held with release steps left to take (``rq.StrokeSettle``)."""
        return self.session is not None and self.session.can_settle()

    def _stroke_end(self, req: rq.StrokeEnd) -> bool:
        self._need_session().brush_end()
        return True

    def _set_sliders(self, req: rq.SetSliders) -> bool:
        s = self._need_session()
        s.set_sliders(req.values)
        if req.commit:
            s.commit()
        return True

    def _set_hold(self, req: rq.SetHold) -> bool:
        s = self._need_session()
        s.set_hold(req.on)
        if s.sliders_set:  # the picture changes: one undo step
            s.commit()
        return True

    def _set_latent(self, req: rq.SetLatent) -> bool:
        s = self._need_session()
        s.set_latent(np.asarray(req.values, dtype=np.float32))
        if req.commit:
            s.commit()
        return True

    def _reset(self, req: rq.Reset) -> bool:
        self._need_session().reset()
        return True

    def _sample(self, req: rq.Sample) -> bool:
        self._need_session().sample(req.seed)
        return True

    # ---- files ------------------------------------------------------------------------------------
    def _export(self, req: rq.Export) -> bool:
        s = self._need_session()
        t0 = time.perf_counter()
        self.emit(rq.Progress(req.id, f"exporting {Path(req.path).name}..."))
        save_image(req.path, self._need_document().composite(detail=True), quality=req.quality, photo=s.photo)
        self.emit(rq.Done(req.id, f"exported {Path(req.path).name} "
                                  f"({s.photo.size[0]}x{s.photo.size[1]}, {time.perf_counter() - t0:.1f} s)", req.path))
        return False

    def _save_session(self, req: rq.SaveSession) -> bool:
        save_document(self._need_document(), req.path)
        self.emit(rq.Done(req.id, f"saved session {Path(req.path).name}", req.path))
        return False

    def autosave(self, path: Path) -> bool:
        """Write the document to ``path`` when it changed since the last autosave (never
        mid-stroke, never a document with nothing done yet). Returns whether it wrote."""
        doc = self.document
        if doc is None or doc.current.stroke is not None:
            return False
        sessions = [s for s in doc.sessions.values() if len(s.history) > 1]
        if not sessions:
            return False  # nothing done yet beyond the photo itself
        key = tuple(s.version for s in sessions)
        if key == self._autosaved:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        save_document(doc, path)
        self._autosaved = key
        return True

    # ---- views ------------------------------------------------------------------------------------
    def display_photo(self) -> tuple[float, np.ndarray]:
        """The photo resized to fit the view (kept until the view's size or the document changes)."""
        s = self._need_session()
        if self._display is None:
            w, h = s.photo.size
            scale = fit_scale(w, h, max(16, self.view.width), max(16, self.view.height))
            if scale < 1:
                small = cv2.resize(s.photo.pixels, (max(1, round(w * scale)), max(1, round(h * scale))),
                                   interpolation=cv2.INTER_AREA)
                scale = small.shape[1] / w
            else:
                small = s.photo.pixels
            self._display = (scale, small)
        return self._display

    def edited_view(self, result: CropRender) -> np.ndarray:
        """The photo with every face's edits, as exported (at the view's scale): hair grown by a
        stroke gets its strands once the stroke ends."""
        scale, base = self.display_photo()
        return self._need_document().composite(base, scale, result, detail=self._need_session().stroke is None)

    def raw_view(self, result: CropRender) -> np.ndarray:
        """The decoder's output over the whole crop, no blend mask."""
        scale, base = self.display_photo()
        return self._need_session().paste(to_255(result.generated), torch.ones_like(result.mask), base, scale)

    def mask_view(self, result: CropRender) -> np.ndarray:
        """Where the edit is blended in, in red over the photo."""
        scale, base = self.display_photo()
        red = np.zeros(result.generated.shape[2:] + (3,), np.float32)
        red[..., 0] = 255.0
        return self._need_session().paste(red, result.mask * 0.7, base, scale)

    def original_view(self, result: CropRender) -> np.ndarray:
        return self.display_photo()[1].copy()

    def frame(self, last_id: int, t0: float, work: str = "view") -> rq.Frame:
        """The picture for the requests handled since ``t0`` (``time.perf_counter``), in the view's mode."""
        s = self._need_session()
        preview, self._stroke_preview = self._stroke_preview, None
        result = preview if preview is not None and s.stroke is not None else s.render()
        views = {"edit": self.edited_view, "raw": self.raw_view, "mask": self.mask_view,
                 "original": self.original_view}
        image = views.get(self.view.mode, self.edited_view)(result)
        scale = self.display_photo()[0]
        return rq.Frame(
            id=last_id, generation=self.generation, image=image, scale=scale, photo_size=s.photo.size,
            latent=s.latent_grid(), sliders=s.sliders, hold=s.hold, can_undo=s.can_undo, can_redo=s.can_redo,
            edited=self._need_document().edited, faces=tuple(face_info(f) for f in self.faces),
            face_index=self.face_index,
            mode=self.view.mode, ms=(time.perf_counter() - t0) * 1000, name=s.photo.name, work=work)

    def slider_strips(self) -> dict[str, np.ndarray]:
        """Per principal direction, a strip of this face moved along it (STRIP_VALUES)."""
        s = self._need_session()
        strips = {}
        n = len(STRIP_VALUES)
        for a in self.engine.attributes.of_kind(SliderKind.PRINCIPAL, s.hold):
            d = a.step * s.attributes.direction(a.name, s.hold).to(s.device)
            offsets = torch.stack([v * d for v in STRIP_VALUES])
            # as the slider will show it: a set slider leaves a shortcut's photo map out (EditSession.kept_map)
            shown = render_shift(s.model.model.decode, s.x.expand(n, -1, -1, -1), s.z0.expand(n, -1), offsets,
                                 s.mask_settings, a=s.a0)
            tiles = [cv2.resize(t, (STRIP_SIZE, STRIP_SIZE), interpolation=cv2.INTER_AREA) for t in to_uint8(shown)]
            strips[a.name] = np.concatenate(tiles, axis=1)
        return strips

    def emit_thumbnails(self) -> None:
        strips = self.slider_strips()
        if strips:
            self.emit(rq.Thumbnails(self.generation, strips))
