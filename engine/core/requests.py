"""What a front end (the editor's worker) asks of the edit service, and what it gets back.

Every request is a small frozen object carrying an ``id`` (increasing) and the GUI's
document ``generation`` (bumped on open and on face change). The worker answers with the
id of the last request it handled, so the GUI can discard what is out of date.

``merge`` is the newest-wins policy applied to whatever has queued up while the worker
was busy: brush samples are concatenated into one move, previews that a later preview
replaces are dropped, and requests from an older document generation are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from engine.core.attributes import Slider, SliderValues


@dataclass(frozen=True)
class Request:
    id: int = 0
    generation: int = 0


# ---- document -----------------------------------------------------------------------
@dataclass(frozen=True)
class OpenPhoto(Request):
    path: str = ""
    face: int | None = None


@dataclass(frozen=True)
class OpenSession(Request):
    path: str = ""


@dataclass(frozen=True)
class ChooseFace(Request):
    index: int = 0


@dataclass(frozen=True)
class PlaceFace(Request):
    rect: tuple[float, float, float, float] = (0, 0, 0, 0)  # photo pixels x0, y0, x1, y1


# ---- edits --------------------------------------------------------------------------
@dataclass(frozen=True)
class StrokeBegin(Request):
    color: tuple[int, int, int] = (0, 0, 0)
    radius: float = 8.0  # photo pixels
    strength: float = 1.0


@dataclass(frozen=True)
class StrokeMove(Request):
    points: tuple[tuple[float, float], ...] = ()  # photo pixels


@dataclass(frozen=True)
class StrokeEnd(Request):
    pass


@dataclass(frozen=True)
class StrokeSettle(Request):
    """The worker's own, when the mailbox stays empty while a stroke is held still: one of the
    steps the release would take (``EditSession.brush_settle``)."""


@dataclass(frozen=True)
class SetSliders(Request):
    values: SliderValues = SliderValues()
    commit: bool = False  # False: a live preview; True: the release, one undo step


@dataclass(frozen=True)
class SetLatent(Request):
    values: tuple[float, ...] = ()
    commit: bool = False


@dataclass(frozen=True)
class SetHold(Request):
    on: bool = True  # sliders hold correlated attributes fixed (one undo step when sliders are set)


@dataclass(frozen=True)
class Undo(Request):
    pass


@dataclass(frozen=True)
class Redo(Request):
    pass


@dataclass(frozen=True)
class Reset(Request):
    pass


@dataclass(frozen=True)
class Sample(Request):
    seed: int | None = None


# ---- output -------------------------------------------------------------------------
@dataclass(frozen=True)
class View(Request):
    width: int = 800
    height: int = 600
    mode: str = "edit"  # edit | raw | mask | original


@dataclass(frozen=True)
class Export(Request):
    path: str = ""
    quality: int = 95


@dataclass(frozen=True)
class SaveSession(Request):
    path: str = ""
    autosave: bool = False


@dataclass(frozen=True)
class Shutdown(Request):
    pass


# ---- answers ------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceInfo:
    box: tuple[tuple[float, float], ...]  # polygon, photo pixels
    eyes: tuple[tuple[float, float], ...]
    manual: bool = False


@dataclass(frozen=True)
class Frame:
    """The image to show, and the state the widgets mirror."""

    id: int
    generation: int
    image: np.ndarray  # uint8 (h, w, 3), the photo at display scale
    scale: float  # display pixels per photo pixel
    photo_size: tuple[int, int]
    latent: np.ndarray  # (rows, cols)
    sliders: SliderValues
    hold: bool  # sliders hold correlated attributes fixed
    can_undo: bool
    can_redo: bool
    edited: bool
    faces: tuple[FaceInfo, ...] = ()
    face_index: int = 0
    mode: str = "edit"
    ms: float = 0.0  # engine time for this frame: from taking its requests to this picture, ready to show
    name: str = ""
    work: str = ""  # what that time was spent on (``work_label``)


@dataclass(frozen=True)
class Opened:
    id: int
    generation: int
    name: str
    path: str
    photo_size: tuple[int, int]
    faces: tuple[FaceInfo, ...]
    face_index: int
    no_face: bool  # True: none was found; the whole image is used until a box is placed
    ms: float


@dataclass(frozen=True)
class Ready:
    """The model is loaded."""

    info: dict[str, object] = field(default_factory=dict)
    sliders: tuple[Slider, ...] = ()


@dataclass(frozen=True)
class Thumbnails:
    """Per unlabelled direction, a strip of the current face moved along it (uint8 h, w, 3)."""

    generation: int
    strips: dict[str, np.ndarray]


@dataclass(frozen=True)
class Progress:
    id: int
    text: str


@dataclass(frozen=True)
class Done:
    id: int
    text: str
    path: str = ""


@dataclass(frozen=True)
class Failed:
    id: int
    message: str
    request: str = ""
    fatal: bool = False  # the engine cannot run at all (e.g. the model is missing)


_PREVIEWS = (SetSliders, SetLatent)


def merge(batch: list[Request], generation: int = 0) -> list[Request]:
    """Newest wins: the requests worth handling, in order, from a queued batch."""
    out: list[Request] = []
    latest_open = max((r.generation for r in batch if isinstance(r, (OpenPhoto, OpenSession))), default=None)
    for r in batch:
        if isinstance(r, Shutdown):
            return [r]
        floor = generation if latest_open is None else max(generation, latest_open)
        if r.generation < floor and not isinstance(r, (Export, SaveSession)):
            continue  # belongs to a document that has been replaced
        prev = out[-1] if out else None
        if isinstance(r, StrokeMove) and isinstance(prev, StrokeMove):
            out[-1] = replace(r, points=prev.points + r.points)
        elif isinstance(r, _PREVIEWS) and isinstance(prev, type(r)) and not prev.commit:  # type: ignore[attr-defined]
            out[-1] = r
        elif isinstance(r, View):
            out = [q for q in out if not isinstance(q, View)]
            out.append(r)
        else:
            out.append(r)
    return out


def work_label(work: list[Request]) -> str:
    """What a handled batch did, as the status bar names its time: the most expensive part wins."""
    kinds = {type(r) for r in work}
    for cls, label in ((OpenPhoto, "open"), (OpenSession, "open"), (StrokeEnd, "stroke end"),
                       (StrokeMove, "brush step"), (StrokeSettle, "brush step"), (SetSliders, "slider"),
                       (SetLatent, "latent canvas"),
                       (Undo, "undo"), (Redo, "redo"), (Reset, "reset"), (Sample, "sample")):
        if cls in kinds:
            return label
    return "view"
