"""The engine worker: one thread with a mailbox, in front of the edit service.

The GUI puts requests in the mailbox (``send`` never blocks) and gets answers through a
callback, which the main window connects to a queued Qt signal so widgets are only touched
on the GUI thread. Whatever queues up while the thread is busy is merged
(``requests.merge``): a long stroke never builds up lag. The thread loads the engine, hands
each request to ``EditService.handle``, sends one ``Frame`` per batch, and autosaves when
the document has changed. Every failure comes back as a ``Failed`` answer; the thread keeps
running. While a stroke is held still (nothing in the mailbox for ``SETTLE_AFTER`` seconds), the
thread takes the steps the stroke's release would take, one at a time, each with its picture:
the preview settles on what letting go will give, and the release has less left to do. Qt-free,
so it is tested without a display.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.core import requests as rq
from engine.core.checkpoint import ModelError
from engine.core.pipeline import Engine
from engine.core.service import RECOVERABLE, EditService

EngineFactory = Callable[[], Engine]
Emit = Callable[[object], None]

# A stroke whose pointer has not moved for this long (seconds) is held still: its release's steps
# begin. Moving pointers send samples far more often (a 60 Hz mouse: every 17 ms).
SETTLE_AFTER = 0.12


class EngineWorker:
    def __init__(self, engine_factory: EngineFactory, emit: Emit,
                 autosave_path: Path | None = None, autosave_seconds: float = 30.0) -> None:
        self._factory = engine_factory
        self._emit = emit
        self._mailbox: queue.SimpleQueue[rq.Request] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="npe-engine", daemon=True)
        self.service: EditService | None = None  # once the engine has loaded
        self.generation = 0
        self.autosave_path = autosave_path
        self.autosave_seconds = autosave_seconds
        self._last_autosave = time.monotonic()
        self._last_id = 0  # the last request handled, which a held stroke's own steps answer to

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
            self.service = EditService(self._factory(), self._emit)
        except Exception as e:  # noqa: BLE001 - reported to the user as data
            self._emit(rq.Failed(0, str(e) if isinstance(e, RECOVERABLE) else f"the model could not start: {e}",
                                 "load", fatal=True))
        else:
            self._emit(self.service.ready())
        while True:
            settle = self.service is not None and self.service.can_settle()
            wait = self._autosave_wait()
            if settle:
                wait = SETTLE_AFTER if wait is None else min(wait, SETTLE_AFTER)
            try:
                batch = [self._mailbox.get(timeout=wait)]
            except queue.Empty:
                if settle:
                    self._carry_out([rq.StrokeSettle(id=self._last_id, generation=self.generation)])
                if not settle or self._autosave_due():
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
            self._carry_out(work)
            if self._autosave_due():
                self._autosave()

    def _carry_out(self, work: list[rq.Request]) -> None:
        """Hand each request to the service; then one picture for the whole batch."""
        t0 = time.perf_counter()
        show = False
        last: rq.Request | None = None
        for req in work:
            last = req
            self._last_id = max(self._last_id, req.id)
            self.generation = max(self.generation, req.generation)
            try:
                if self.service is None:
                    if isinstance(req, rq.View):
                        continue
                    raise ModelError("no model is loaded, so nothing can be edited")
                show = self.service.handle(req) or show
            except Exception as e:  # noqa: BLE001 - every failure becomes a message
                show = True
                self._emit(self.service.failure(req, e) if self.service else rq.Failed(req.id, str(e),
                                                                                        type(req).__name__))
        if show and last is not None and self.service is not None and self.service.session is not None:
            try:
                self._emit(self.service.frame(last.id, t0, rq.work_label(work)))
            except Exception as e:  # noqa: BLE001
                self._emit(self.service.failure(rq.View(id=last.id), e))

    # ---- autosave ----------------------------------------------------------------
    def _autosave_wait(self) -> float | None:
        if self.autosave_path is None:
            return None
        return max(0.05, self.autosave_seconds - (time.monotonic() - self._last_autosave))

    def _autosave_due(self) -> bool:
        return time.monotonic() - self._last_autosave >= self.autosave_seconds

    def _autosave(self) -> None:
        self._last_autosave = time.monotonic()
        if self.autosave_path is None or self.service is None:
            return
        try:
            self.service.autosave(self.autosave_path)
        except Exception as e:  # noqa: BLE001 - autosave must never take the editor down
            self._emit(rq.Failed(0, f"autosave failed: {e}", "Autosave"))
