"""Attribute sliders: one per learned direction; moving previews, releasing commits."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from editor.canvas import qimage_from_array
from engine.core.attributes import Slider, SliderKind, SliderValues

STEPS = 100  # slider ticks per unit
LOADING = "Loading the model... the sliders appear when it is ready."
NO_ATTRIBUTES = "This model has no attribute directions."


class AttributePanel(QWidget):
    changed = Signal(object)  # SliderValues, while dragging
    committed = Signal(object)  # SliderValues, on release / reset
    hold_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.sliders: dict[str, QSlider] = {}
        self.values_labels: dict[str, QLabel] = {}
        self._inner = QWidget()
        self._grid = QGridLayout(self._inner)
        self._grid.setColumnStretch(1, 1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self._inner)
        self.reset_all = QPushButton("Reset all sliders")
        self.reset_all.clicked.connect(self._reset_all)
        self.conditional = QCheckBox("Hold correlated attributes fixed")
        self.conditional.setChecked(True)
        self.conditional.setToolTip("E.g. gray hair without ageing the face, makeup without changing gender")
        self.conditional.toggled.connect(self.hold_changed.emit)
        self.conditional.toggled.connect(lambda _=False: self._populate())  # which sliders pass depends on it
        self.show_failed = QCheckBox("Show sliders that failed the judge")
        self.show_failed.setToolTip("Sliders whose edits the attribute judge did not recognise, or that "
                                    "left a coloured mark (see the model card)")
        self.show_failed.toggled.connect(lambda _=False: self._populate())
        self._sliders: tuple[Slider, ...] = ()
        self._values = SliderValues()
        self.strips: dict[str, QLabel] = {}
        self.empty = QLabel(LOADING)
        self.empty.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.empty)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.conditional)
        layout.addWidget(self.show_failed)
        layout.addWidget(self.reset_all)

    def set_thumbnails(self, strips: dict[str, np.ndarray]) -> None:
        """Show what each unlabelled direction changes (a strip of faces, -2 to +2)."""
        for name, strip in strips.items():
            if name in self.strips:
                self.strips[name].setPixmap(QPixmap.fromImage(qimage_from_array(strip)))

    def set_sliders(self, sliders: tuple[Slider, ...]) -> None:
        """The model's sliders: 'weak' ones are marked, 'hidden' ones (failed the judge in the
        current mode) shown only on request or while they hold a value."""
        self._sliders = sliders
        self.empty.setText(NO_ATTRIBUTES)
        self._populate()

    def set_unavailable(self, text: str) -> None:
        """No sliders can be had (the model failed to load): say so instead of 'loading'."""
        self._sliders = ()
        self.empty.setText(text)
        self._populate()

    def set_hold(self, on: bool) -> None:
        """Mirror the edit's hold mode (after undo, or a reopened session) without emitting."""
        if self.conditional.isChecked() != on:
            self.conditional.blockSignals(True)
            self.conditional.setChecked(on)
            self.conditional.blockSignals(False)
            self._populate()

    def _populate(self) -> None:
        hold = self.conditional.isChecked()
        shown = tuple(s for s in self._sliders
                      if s.quality(hold) != "hidden" or self.show_failed.isChecked() or self._values.get(s.name))
        self.show_failed.setVisible(any(s.quality(hold) == "hidden" for s in self._sliders))
        while self._grid.count():
            item = self._grid.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.sliders.clear()
        self.values_labels.clear()
        self.strips.clear()
        self.empty.setVisible(not shown)
        for row, slider in enumerate(shown):
            name, label, quality = slider.name, slider.label, slider.quality(hold)
            text = label + {"weak": " (weak)", "hidden": " (failed)"}.get(quality, "")
            name_label = QLabel(text)
            if quality == "weak":
                name_label.setToolTip("This slider changes the attribute less reliably (see the model card)")
                name_label.setStyleSheet("color: #b0a060")
            elif quality == "hidden":
                name_label.setToolTip("This slider failed its check: the attribute judge did not recognise "
                                      "its edits, or it left a coloured mark (see the model card)")
                name_label.setStyleSheet("color: #a07070")
            s = QSlider(Qt.Orientation.Horizontal)
            s.setRange(int(slider.low * STEPS), int(slider.high * STEPS))
            s.setValue(0)
            s.setObjectName(name)
            s.setAccessibleName(label)
            value = QLabel("0.00")
            value.setMinimumWidth(40)
            reset = QToolButton()
            reset.setText("⟲")
            reset.setToolTip(f"Reset {label}")
            s.valueChanged.connect(lambda v, n=name: self._moved(n, v))
            s.sliderReleased.connect(self._released)
            reset.clicked.connect(lambda _=False, n=name: self._reset_one(n))
            self._grid.addWidget(name_label, 2 * row, 0)
            self._grid.addWidget(s, 2 * row, 1)
            self._grid.addWidget(value, 2 * row, 2)
            self._grid.addWidget(reset, 2 * row, 3)
            if slider.kind is SliderKind.PRINCIPAL:
                strip = QLabel()
                strip.setToolTip(f"What {label.lower()} changes on this face, from -2 to +2")
                self._grid.addWidget(strip, 2 * row + 1, 0, 1, 4)
                self.strips[name] = strip
            self.sliders[name] = s
            self.values_labels[name] = value
        self.set_values(self._values)

    def values(self) -> SliderValues:
        return SliderValues.of({n: s.value() / STEPS for n, s in self.sliders.items()})

    def set_values(self, values: SliderValues) -> None:
        """Mirror the engine's state without emitting."""
        self._values = values
        known = {s.name for s in self._sliders}
        if any(n in known and n not in self.sliders for n in values.names()):
            self._populate()  # a slider not shown holds a value (a session file, another mode): show it
            return
        for n, s in self.sliders.items():
            v = int(round(values.get(n) * STEPS))
            if s.value() != v and not s.isSliderDown():
                s.blockSignals(True)
                s.setValue(v)
                s.blockSignals(False)
            self.values_labels[n].setText(f"{s.value() / STEPS:+.2f}")

    def _moved(self, name: str, v: int) -> None:
        self.values_labels[name].setText(f"{v / STEPS:+.2f}")
        self.changed.emit(self.values())
        if not self.sliders[name].isSliderDown():  # keyboard or wheel: each change is final
            self.committed.emit(self.values())

    def _released(self) -> None:
        self.committed.emit(self.values())

    def _zero(self, name: str) -> None:
        s = self.sliders[name]
        s.blockSignals(True)
        s.setValue(0)
        s.blockSignals(False)
        self.values_labels[name].setText("+0.00")

    def _reset_one(self, name: str) -> None:
        self._zero(name)
        self.committed.emit(self.values())

    def _reset_all(self) -> None:
        for name in self.sliders:
            self._zero(name)
        self.committed.emit(self.values())
