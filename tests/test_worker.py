"""The worker's newest-wins policy and its thread, without Qt and without sleeps."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from editor.worker import EngineWorker
from engine.core import requests as rq
from engine.core.pipeline import Engine, open_session

WAIT = 60


def test_merge_concatenates_brush_samples() -> None:
    moves = [rq.StrokeMove(id=i, points=((i, i),)) for i in range(2, 102)]
    batch = [rq.StrokeBegin(id=1), *moves, rq.StrokeEnd(id=102)]
    out = rq.merge(batch)
    assert [type(r) for r in out] == [rq.StrokeBegin, rq.StrokeMove, rq.StrokeEnd]
    assert out[1].points == tuple((i, i) for i in range(2, 102))
    assert out[1].id == 101


def test_merge_drops_superseded_previews_but_keeps_commits() -> None:
    batch = [rq.SetSliders(id=1, values=(("a", 0.1),)), rq.SetSliders(id=2, values=(("a", 0.2),)),
             rq.SetSliders(id=3, values=(("a", 0.3),), commit=True), rq.SetSliders(id=4, values=(("a", 0.4),))]
    out = rq.merge(batch)
    assert [r.id for r in out] == [3, 4]


def test_merge_drops_work_for_a_replaced_document() -> None:
    batch = [rq.StrokeMove(id=1, generation=1), rq.OpenPhoto(id=2, generation=2, path="x"),
             rq.StrokeMove(id=3, generation=1), rq.Undo(id=4, generation=2)]
    assert [r.id for r in rq.merge(batch)] == [2, 4]
    assert [r.id for r in rq.merge([rq.Undo(id=5, generation=1)], generation=2)] == []


def test_merge_keeps_only_the_newest_view() -> None:
    out = rq.merge([rq.View(id=1, width=10), rq.Undo(id=2), rq.View(id=3, width=30)])
    assert [r.id for r in out] == [2, 3]


def test_merge_shutdown_wins() -> None:
    assert isinstance(rq.merge([rq.Undo(id=1), rq.Shutdown(id=2), rq.Redo(id=3)])[0], rq.Shutdown)


class _Collector:
    def __init__(self, last_id: int) -> None:
        self.answers: list[object] = []
        self.last_id = last_id
        self.done = threading.Event()

    def __call__(self, a: object) -> None:
        self.answers.append(a)
        if isinstance(a, rq.Frame) and a.id >= self.last_id or isinstance(a, rq.Failed) and a.id >= self.last_id:
            self.done.set()


def test_queued_brush_samples_are_merged_into_one_update(tiny_model_dir: Path, face_photo: Path,
                                                        brush_moves: list[int]) -> None:
    gate = threading.Event()

    def slow_factory() -> Engine:
        gate.wait(WAIT)  # everything below queues up while the "model loads"
        return Engine.load(tiny_model_dir, "cpu")

    n = 1000
    points = [(10 + 70 * i / n, 20 + 40 * i / n) for i in range(n)]
    collect = _Collector(last_id=n + 10)
    worker = EngineWorker(slow_factory, collect)
    worker.start()
    worker.send(rq.OpenPhoto(id=1, path=str(face_photo)))
    worker.send(rq.StrokeBegin(id=2, color=(250, 240, 10), radius=5.0))
    for i, p in enumerate(points):
        worker.send(rq.StrokeMove(id=3 + i, points=(p,)))
    worker.send(rq.StrokeEnd(id=n + 10))
    gate.set()
    assert collect.done.wait(WAIT)
    assert worker.stop()
    assert brush_moves == [n]  # a thousand samples, one latent update
    frames = [a for a in collect.answers if isinstance(a, rq.Frame)]
    assert len(frames) == 1
    assert frames[0].can_undo

    # the same as applying the merged stroke directly
    s, _ = open_session(Engine.load(tiny_model_dir, "cpu"), face_photo)
    s.brush_begin((250, 240, 10), 5.0)
    s.brush_to(points)
    s.brush_end()
    assert torch.equal(worker.service.session.z, s.z)
    assert np.array_equal(frames[0].latent, s.latent_grid())


def test_errors_come_back_as_data_and_the_worker_keeps_going(tiny_model_dir: Path, face_photo: Path,
                                                             tmp_path: Path) -> None:
    collect = _Collector(last_id=4)
    worker = EngineWorker(lambda: Engine.load(tiny_model_dir, "cpu"), collect)
    worker.start()
    worker.send(rq.Undo(id=1))  # nothing open yet
    worker.send(rq.OpenPhoto(id=2, path=str(tmp_path / "missing.png")))
    worker.send(rq.OpenPhoto(id=3, path=str(face_photo)))
    worker.send(rq.Sample(id=4, seed=1))
    assert collect.done.wait(WAIT)
    assert worker.stop()
    failed = [a for a in collect.answers if isinstance(a, rq.Failed)]
    assert [f.id for f in failed] == [1, 2]
    assert "no photo is open" in failed[0].message
    assert "does not exist" in failed[1].message
    assert isinstance(collect.answers[-1], rq.Frame)
    assert collect.answers[-1].edited


def test_a_broken_model_is_reported_and_stop_still_works(tmp_path: Path) -> None:
    collect = _Collector(last_id=0)
    worker = EngineWorker(lambda: Engine.load(tmp_path, "cpu"), collect)
    worker.start()
    assert collect.done.wait(WAIT)
    assert isinstance(collect.answers[0], rq.Failed)
    assert collect.answers[0].fatal
    assert worker.stop()


def test_a_stroke_outside_the_photo_is_reported(tiny_model_dir: Path, face_photo: Path) -> None:
    collect = _Collector(last_id=4)
    worker = EngineWorker(lambda: Engine.load(tiny_model_dir, "cpu"), collect)
    worker.start()
    worker.send(rq.OpenPhoto(id=1, path=str(face_photo)))
    worker.send(rq.StrokeBegin(id=2, color=(0, 0, 0), radius=4.0))
    worker.send(rq.StrokeMove(id=3, points=((-300.0, 40.0), (-200.0, 45.0))))
    worker.send(rq.StrokeEnd(id=4))
    assert collect.done.wait(WAIT)
    assert worker.stop()
    failed = [a for a in collect.answers if isinstance(a, rq.Failed)]
    assert [(f.request, f.id) for f in failed] == [("StrokeEnd", 4)]
    assert "entirely outside the photo" in failed[0].message
    assert not worker.service.session.can_undo


def test_a_stroke_held_still_settles_on_its_release_without_more_requests(tiny_model_dir: Path,
                                                                         face_photo: Path) -> None:
    """After one brush sample and nothing more, the worker takes the release's steps itself, each
    with a frame; the release then adds nothing, and the stroke ends where a quick one would."""
    from engine.core.session import REFINE_STEPS_ON_RELEASE

    settled, ended = threading.Event(), threading.Event()
    answers: list[object] = []

    def collect(a: object) -> None:
        answers.append(a)
        if isinstance(a, rq.Frame) and a.id == 4:
            ended.set()
        elif isinstance(a, rq.Frame) and worker.service is not None and not worker.service.can_settle():
            settled.set()  # the last of the rest's steps (this runs on the worker's thread)

    worker = EngineWorker(lambda: Engine.load(tiny_model_dir, "cpu"), collect)
    worker.start()
    worker.send(rq.OpenPhoto(id=1, path=str(face_photo)))
    worker.send(rq.StrokeBegin(id=2, color=(250, 240, 10), radius=5.0))
    worker.send(rq.StrokeMove(id=3, points=((20.0, 30.0), (40.0, 35.0))))
    assert settled.wait(WAIT)
    frames = [f for f in answers if isinstance(f, rq.Frame)]
    rest = frames[-REFINE_STEPS_ON_RELEASE:]
    assert all(f.work == "brush step" and f.id == 3 for f in rest)  # answers to the last request sent
    assert len({f.image.tobytes() for f in rest}) > 1  # the picture moved on while held
    worker.send(rq.StrokeEnd(id=4))
    assert ended.wait(WAIT)
    assert worker.stop()

    s, _ = open_session(Engine.load(tiny_model_dir, "cpu"), face_photo)
    s.brush_begin((250, 240, 10), 5.0)
    s.brush_to([(20.0, 30.0), (40.0, 35.0)])
    s.brush_end()
    assert torch.equal(worker.service.session.z, s.z)


def test_frames_say_what_their_time_was_spent_on() -> None:
    assert rq.work_label([rq.StrokeMove()]) == "brush step"
    assert rq.work_label([rq.StrokeSettle()]) == "brush step"
    assert rq.work_label([rq.StrokeBegin(), rq.StrokeMove(), rq.StrokeEnd()]) == "stroke end"
    assert rq.work_label([rq.SetSliders()]) == "slider"
    assert rq.work_label([rq.View(), rq.OpenPhoto()]) == "open"
    assert rq.work_label([rq.View()]) == "view"


def test_every_request_has_a_handler_in_the_service(engine) -> None:
    from engine.core.service import EditService

    service = EditService(engine, lambda a: None)
    kinds = {c for c in vars(rq).values() if isinstance(c, type) and issubclass(c, rq.Request)}
    assert kinds - set(service.handlers) == {rq.Request, rq.Shutdown}  # shutdown is the worker's own
