"""The engine worker: one thread that owns the model and the edit session.

The GUI puts requests in the worker's mailbox (``send`` never blocks) and gets answers
through a callback, which the main window connects to a queued Qt signal so widgets are
only touched on the GUI thread. Whatever queues up while the worker is busy is merged
(``requests.merge``): a long stroke never builds up lag. Every failure comes back as a
``Failed`` answer; the worker keeps running. Qt-free, so it is tested without a display.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.core import requests as rq
from engine.core.checkpoint import ModelError
from engine.core.device import failure_note, is_device_failure
from engine.core.faces import Face, face_from_rect
from engine.core.images import ImageError, save_image, to_uint8
from engine.core.pipeline import Engine, NoFaceError, open_session
from engine.core.session import CropRender, EditSession, fit_scale

log = logging.getLogger(__name__)
Answer = object
EngineFactory = Callable[[], Engine]

RECOVERABLE = (ImageError, ModelError, NoFaceError, ValueError, KeyError, OSError)


def _face_info(face: Face) -> rq.FaceInfo:
    return rq.FaceInfo(box=tuple(map(tuple, face.box.tolist())), eyes=tuple(map(tuple, face.eyes.tolist())),
                       manual=face.manual)


class EngineWorker:
    def __init__(self, engine_factory: EngineFactory, emit: Callable[[Answer], None],
                 autosave_path: Path | None = None, autosave_seconds: float = 30.0) -> None:
        self._factory = engine_factory
        self._emit = emit
        self._mailbox: queue.SimpleQueue[rq.Request] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="npe-engine", daemon=True)
        self.engine: Engine | None = None
        self.session: EditSession | None = None
        self.faces: list[Face] = []
        self.face_index = 0
        self.generation = 0
        self.view = rq.View()
        self._display: tuple[float, np.ndarray] | None = None  # (scale, resized photo)
        self.batches = 0  # merged batches handled, for tests and figures
        self.steps = 0  # brush updates taken
        self.moves: list[int] = []  # points per handled brush move (what the merge produced)
        self.autosave_path = autosave_path
        self.autosave_seconds = autosave_seconds
        self._autosaved: tuple[int, ...] | None = None
        self._last_autosave = time.monotonic()

    # ---- GUI side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def send(self, request: rq.Request) -> None:
        """Queue a request; returns at once."""
        self._mailbox.put(request)

    def stop(self, timeout: float = 10.0) -> bool:
        """Ask the thread to finish and wait for it. Returns whether it ended."""
        if self._thread.is_alive():
            self._mailbox.put(rq.Shutdown())
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- worker thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.engine = self._factory()
        except Exception as e:  # noqa: BLE001 - reported to the user as data
            self._emit(rq.Failed(0, str(e) if isinstance(e, RECOVERABLE) else f"the model could not start: {e}",
                                 "load", fatal=True))
            self.engine = None
        else:
            self._emit_ready()
        while True:
            try:
                batch = [self._mailbox.get(timeout=self._autosave_wait())]
            except queue.Empty:
                self._autosave()
                continue
            while True:
                try:
                    batch.append(self._mailbox.get_nowait())
                except queue.Empty:
                    break
            work = rq.merge(batch, self.generation)
            if work and isinstance(work[0], rq.Shutdown):
                return
            self.batches += 1
            t0 = time.perf_counter()
            show = False
            last_id = 0
            for req in work:
                last_id = req.id
                try:
                    show = self._handle_on_any_device(req) or show
                except Exception as e:  # noqa: BLE001 - every failure becomes a message
                    show = True
                    self._report(req, e)
            if show and self.session is not None:
                try:
                    self._emit(self._frame(last_id, t0, rq.work_label(work)))
                except Exception as e:  # noqa: BLE001
                    self._report(rq.View(id=last_id), e)
            if time.monotonic() - self._last_autosave >= self.autosave_seconds:
                self._autosave()

    # ---- autosave ----------------------------------------------------------------
    def _state_key(self) -> tuple[int, ...] | None:
        s = self.session
        if s is None or len(s.history) < 2:
            return None  # nothing worth keeping beyond the photo itself
        return (id(s), s.position, len(s.history), id(s.history[s.position]))

    def _autosave_wait(self) -> float | None:
        if self.autosave_path is None:
            return None
        return max(0.05, self.autosave_seconds - (time.monotonic() - self._last_autosave))

    def _autosave(self) -> None:
        """Write the session to the autosave file when it changed since the last write."""
        self._last_autosave = time.monotonic()
        key = self._state_key()
        if self.autosave_path is None or key is None or key == self._autosaved or self.session is None:
            return
        if self.session.stroke is not None:
            return  # mid-stroke: the next pass will catch the finished stroke
        from engine.core.document import save_session

        try:
            self.autosave_path.parent.mkdir(parents=True, exist_ok=True)
            save_session(self.session, self.autosave_path, self.faces, self.face_index)
            self._autosaved = key
        except Exception as e:  # noqa: BLE001 - autosave must never take the editor down
            self._emit(rq.Failed(0, f"autosave failed: {e}", "Autosave"))

    # ---- device fallback ------------------------------------------------------------
    def _handle_on_any_device(self, req: rq.Request) -> bool:
        try:
            return self._handle(req)
        except Exception as e:
            if self.engine is None or not is_device_failure(e):
                raise
            self._fall_back_to_cpu(e)
            return self._handle(req)

    def _fall_back_to_cpu(self, error: BaseException) -> None:
        assert self.engine is not None
        cpu = torch.device("cpu")
        self.engine.loaded.model.to(cpu)
        self.engine.device = cpu
        if self.session is not None:
            self.session.to(cpu)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._emit(rq.Failed(0, failure_note(error), "Device"))
        self._emit_ready()

    def _emit_ready(self) -> None:
        assert self.engine is not None
        self._emit(rq.Ready(self.engine.describe(), tuple(
            (a.name, a.label, a.quality_in(True), a.quality_in(False)) for a in self.engine.attributes.attributes)))

    def _report(self, req: rq.Request, e: Exception) -> None:
        if isinstance(e, RECOVERABLE):
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        else:
            log.error("engine error on %s:\n%s", type(req).__name__, traceback.format_exc())
            msg = f"internal error while handling {type(req).__name__}: {type(e).__name__}: {e}"
        if self.session is not None and self.session.stroke is not None:
            self.session.cancel_stroke()
        self._emit(rq.Failed(req.id, msg, type(req).__name__))

    def _need_session(self) -> EditSession:
        if self.session is None:
            raise ValueError("no photo is open")
        return self.session

    def _handle(self, req: rq.Request) -> bool:
        """Carry out one request; returns whether the picture may have changed."""
        self.generation = max(self.generation, req.generation)
        if isinstance(req, rq.View):
            if (req.width, req.height) != (self.view.width, self.view.height):
                self._display = None
            self.view = req
            return True
        if self.engine is None:
            raise ModelError("no model is loaded, so nothing can be edited")
        if isinstance(req, rq.OpenPhoto):
            self._emit(rq.Progress(req.id, f"opening {Path(req.path).name}..."))
            t0 = time.perf_counter()
            session, faces = open_session(self.engine, req.path, req.face)
            self._install(session, faces, 0 if req.face is None else req.face)
            self._emit(rq.Opened(req.id, req.generation, session.photo.name, req.path, session.photo.size,
                                 tuple(_face_info(f) for f in faces), self.face_index, not faces,
                                 (time.perf_counter() - t0) * 1000))
            self._emit_thumbnails()
            return True
        if isinstance(req, rq.OpenSession):
            from engine.core.document import load_session

            session, faces, face_index = load_session(self.engine, req.path)
            self._install(session, faces, face_index)
            self._emit(rq.Opened(req.id, req.generation, session.photo.name, req.path, session.photo.size,
                                 tuple(_face_info(f) for f in faces), face_index, not faces, 0.0))
            self._emit_thumbnails()
            return True
        s = self._need_session()
        if isinstance(req, rq.ChooseFace):
            if not 0 <= req.index < len(self.faces):
                raise ValueError(f"there is no face {req.index}")
            self.face_index = req.index
            s.set_face(self.faces[req.index])
            self._emit_thumbnails()
            return True
        if isinstance(req, rq.PlaceFace):
            x0, y0, x1, y1 = req.rect
            if min(abs(x1 - x0), abs(y1 - y0)) < 8:
                raise ValueError("the face box is too small: drag a box around the whole face")
            face = face_from_rect(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            self.faces.append(face)
            self.face_index = len(self.faces) - 1
            s.set_face(face)
            return True
        if isinstance(req, rq.StrokeBegin):
            s.brush_begin(req.color, req.radius, req.strength)
            return False
        if isinstance(req, rq.StrokeMove):
            if s.stroke is None:
                return False
            self._preview = s.brush_to(list(req.points))
            self.steps += 1
            self.moves.append(len(req.points))
            return True
        if isinstance(req, rq.StrokeEnd):
            s.brush_end()
            return True
        if isinstance(req, rq.SetSliders):
            s.set_sliders(dict(req.values))
            if req.commit:
                s.commit()
            return True
        if isinstance(req, rq.SetConditional):
            s.attributes.set_conditional(req.on)
            s.invalidate()
            return True
        if isinstance(req, rq.SetLatent):
            s.set_latent(np.asarray(req.values, dtype=np.float32))
            if req.commit:
                s.commit()
            return True
        if isinstance(req, rq.Undo):
            return s.undo()
        if isinstance(req, rq.Redo):
            return s.redo()
        if isinstance(req, rq.Reset):
            s.reset()
            return True
        if isinstance(req, rq.Sample):
            s.sample(req.seed)
            return True
        if isinstance(req, rq.Export):
            t0 = time.perf_counter()
            self._emit(rq.Progress(req.id, f"exporting {Path(req.path).name}..."))
            save_image(req.path, s.composite(), quality=req.quality, photo=s.photo)
            self._emit(rq.Done(req.id, f"exported {Path(req.path).name} "
                                       f"({s.photo.size[0]}x{s.photo.size[1]}, {time.perf_counter() - t0:.1f} s)",
                               req.path))
            return False
        if isinstance(req, rq.SaveSession):
            from engine.core.document import save_session

            save_session(s, req.path, self.faces, self.face_index)
            if not req.autosave:
                self._emit(rq.Done(req.id, f"saved session {Path(req.path).name}", req.path))
            return False
        raise ValueError(f"unknown request {type(req).__name__}")

    def _emit_thumbnails(self, values: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0), size: int = 48) -> None:
        """Strips of the current face moved along each unlabelled direction."""
        s = self.session
        if s is None:
            return
        import cv2

        from engine.core.edit import render

        strips = {}
        with torch.inference_mode():
            for a in s.attributes.visible():
                if a.kind != "pca":
                    continue
                d = s.attributes.direction(a.name).to(s.device) * a.step
                zs = torch.cat([s.z0 + v * d for v in values])
                photo = s.x.expand(len(values), -1, -1, -1)
                shown, _ = render(photo, s.recon0, s.decoder(zs), without_sliders=s.recon0)
                tiles = [cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA) for t in to_uint8(shown)]
                strips[a.name] = np.concatenate(tiles, axis=1)
        if strips:
            self._emit(rq.Thumbnails(self.generation, strips))

    def _install(self, session: EditSession, faces: list[Face], face_index: int) -> None:
        self.session = session
        self.faces = list(faces) if faces else []
        self.face_index = face_index
        self._display = None
        self._autosaved = None

    def _display_photo(self, s: EditSession) -> tuple[float, np.ndarray]:
        if self._display is None:
            import cv2

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

    def _frame(self, last_id: int, t0: float, work: str = "view") -> rq.Frame:
        """The picture for the requests handled since ``t0`` (``time.perf_counter``), timed to the end."""
        s = self._need_session()
        scale, base = self._display_photo(s)
        mode = self.view.mode
        stroke_preview = getattr(self, "_preview", None) if s.stroke is not None else None
        self._preview = None
        result = stroke_preview or s.render()
        if mode == "original":
            image = base.copy()
        elif mode == "raw":
            raw = CropRender(result.generated, result.generated, torch.ones_like(result.mask))
            image = s.composite(base, scale, raw, keep_detail=False)
        elif mode == "mask":
            red = -torch.ones_like(result.generated)
            red[:, 0] = 1.0
            overlay = CropRender(red, red, result.mask * 0.7)
            image = s.composite(base, scale, overlay, keep_detail=False)
        else:
            image = s.composite(base, scale, result)
        return rq.Frame(
            id=last_id, generation=self.generation, image=image, scale=scale, photo_size=s.photo.size,
            latent=s.latent_grid(), sliders=tuple(sorted(s.sliders.items())), can_undo=s.can_undo,
            can_redo=s.can_redo, edited=s.edited, faces=tuple(_face_info(f) for f in self.faces),
            face_index=self.face_index, crop=to_uint8(result.shown[0]), mode=mode,
            ms=(time.perf_counter() - t0) * 1000, name=s.photo.name, work=work)
