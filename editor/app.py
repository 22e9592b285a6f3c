"""Starting the editor window (``npe`` or ``npe PHOTO``, through editor.launch)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication

from editor import display
from editor.main_window import MainWindow
from engine.core.pipeline import Engine

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_PHOTO = RESOURCES / "astronaut.png"


def engine_factory(weights: str | None, device: str):
    def make() -> Engine:
        return Engine.load(weights, device)

    return make


def run(photo: str | None = None, weights: str | None = None, device: str = "auto") -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = QApplication.instance()
    if app is None:
        display.require()  # one clear line instead of Qt aborting the process (editor.launch reports it)
        app = QApplication(sys.argv[:1])
    app.setApplicationName("Neural Photo Editor")
    app.setOrganizationName("neural-photo-editor")
    window = MainWindow(engine_factory(weights, device))
    window.show()
    if photo:
        window.open_path(str(photo))
    elif not window.offer_recovery():
        window.open_path(str(DEFAULT_PHOTO))
    return app.exec()
