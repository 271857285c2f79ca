"""The webcam pane: live view, frames sampled at a chosen rate and streamed into memory, and
questions about what the camera sees or saw. It shows state and emits intent; the controller
(webcam/controller.py) talks to the engine client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.webcam.camera import (
    FrameSource,
    QtCameraSource,
    camera_unavailable_reason,
    qimage_to_rgb,
    scaled_to_pixels,
)
from app.webcam.frame_sampler import MAX_RATE_HZ, MIN_RATE_HZ, FrameSampler

log = logging.getLogger(__name__)

DEFAULT_RATE_HZ = 1.0


def default_source() -> FrameSource | str:
    """The system camera, or why there is none."""
    reason = camera_unavailable_reason()
    return reason if reason is not None else QtCameraSource()


class WebcamPane(QtWidgets.QWidget):
    """A camera view whose sampled frames stream into the conversation's state."""

    frames_sampled = QtCore.Signal(object)  # list[np.ndarray] uint8 [H, W, 3], oldest first
    question_asked = QtCore.Signal(str, object)  # question, the current frame or None

    def __init__(
        self,
        source_factory: Callable[[], FrameSource | str] = default_source,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.source_factory = source_factory
        self.source: FrameSource | None = None
        self.sampler: FrameSampler[QtGui.QImage] = FrameSampler(DEFAULT_RATE_HZ)
        self.latest: QtGui.QImage | None = None
        self.is_feeding = False  # a batch is with the engine
        self.is_asking = False
        self.frames_fed = 0
        self._build()
        self._connect()
        self._update_buttons()

    def _build(self) -> None:
        self.view = QtWidgets.QLabel("Camera off.")
        self.view.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.view.setMinimumSize(320, 240)
        self.camera_button = QtWidgets.QPushButton("Start camera")
        self.stream_check = QtWidgets.QCheckBox("Stream into memory")
        self.stream_check.setChecked(True)
        self.rate_spin = QtWidgets.QDoubleSpinBox()
        self.rate_spin.setRange(MIN_RATE_HZ, MAX_RATE_HZ)
        self.rate_spin.setSingleStep(0.5)
        self.rate_spin.setValue(DEFAULT_RATE_HZ)
        self.rate_spin.setSuffix(" frames/s")
        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        self.question = QtWidgets.QLineEdit()
        self.question.setPlaceholderText("Ask about what the camera sees or saw…")
        self.with_frame_check = QtWidgets.QCheckBox("include the current frame")
        self.with_frame_check.setChecked(True)
        self.ask_button = QtWidgets.QPushButton("Ask")
        self.answer = QtWidgets.QPlainTextEdit()
        self.answer.setReadOnly(True)

        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(self.camera_button)
        controls.addWidget(self.stream_check)
        controls.addWidget(self.rate_spin)
        ask = QtWidgets.QHBoxLayout()
        ask.addWidget(self.question, 1)
        ask.addWidget(self.with_frame_check)
        ask.addWidget(self.ask_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        layout.addLayout(ask)
        layout.addWidget(self.answer)

    def _connect(self) -> None:
        self.camera_button.clicked.connect(self._on_camera_clicked)
        self.rate_spin.valueChanged.connect(self._on_rate_changed)
        self.ask_button.clicked.connect(self._on_ask_clicked)
        self.question.returnPressed.connect(self._on_ask_clicked)

    def start_camera(self) -> bool:
        """Open the source and start the view; a missing camera is a message. True if started."""
        source = self.source_factory()
        if isinstance(source, str):
            self.status.setText(source)
            return False
        self.source = source
        self.sampler.reset()
        source.start(self.on_frame, self.on_source_error)
        self.status.setText(f"{source.name}: on.")
        self._update_buttons()
        return True

    def stop_camera(self) -> None:
        if self.source is not None:
            self.source.stop()
            self.source = None
        self.latest = None
        self.sampler.reset()
        self.view.setText("Camera off.")
        self._update_buttons()

    def on_frame(self, image: QtGui.QImage, t: float) -> None:
        """A frame from the source (GUI thread): show it, and sample it into the stream."""
        self.latest = image
        size = self.view.size()
        pixmap = QtGui.QPixmap.fromImage(image)
        self.view.setPixmap(pixmap.scaled(size, QtCore.Qt.AspectRatioMode.KeepAspectRatio))
        if self.stream_check.isChecked() and self.sampler.offer(image, t):
            self._send_pending()

    def on_source_error(self, message: str) -> None:
        self.status.setText(message)

    # told by the controller

    @QtCore.Slot(int)
    def on_frames_fed(self, count: int) -> None:
        self.is_feeding = False
        self.frames_fed += count
        dropped = self.sampler.dropped
        extra = f" ({dropped} skipped while the model was busy)" if dropped else ""
        self.status.setText(f"{self.frames_fed} frames in memory{extra}.")
        self._send_pending()

    @QtCore.Slot(str)
    def on_feed_failed(self, message: str) -> None:
        self.is_feeding = False
        self.stream_check.setChecked(False)
        self.sampler.reset()
        self.status.setText(f"Streaming stopped: {message}")

    @QtCore.Slot(str)
    def on_answer_streamed(self, text: str) -> None:
        self.answer.moveCursor(QtGui.QTextCursor.MoveOperation.End)
        self.answer.insertPlainText(text)

    @QtCore.Slot()
    def on_answer_finished(self) -> None:
        self.is_asking = False
        self._update_buttons()

    @QtCore.Slot(str)
    def on_answer_failed(self, message: str) -> None:
        self.is_asking = False
        self.answer.setPlainText(f"No answer: {message}")
        self._update_buttons()

    # own slots

    @QtCore.Slot()
    def _on_camera_clicked(self) -> None:
        if self.source is None:
            self.start_camera()
        else:
            self.stop_camera()

    @QtCore.Slot(float)
    def _on_rate_changed(self, rate: float) -> None:
        self.sampler.set_rate(rate)

    @QtCore.Slot()
    def _on_ask_clicked(self) -> None:
        text = self.question.text().strip()
        if not text or self.is_asking:
            return
        frame = None
        if self.with_frame_check.isChecked() and self.latest is not None:
            frame = qimage_to_rgb(scaled_to_pixels(self.latest))
        self.is_asking = True
        self.answer.clear()
        self._update_buttons()
        self.question_asked.emit(text, frame)

    def _send_pending(self) -> None:
        if self.is_feeding or self.sampler.num_pending == 0:
            return
        frames = [qimage_to_rgb(scaled_to_pixels(image)) for image in self.sampler.take()]
        self.is_feeding = True
        self.frames_sampled.emit(frames)

    def _update_buttons(self) -> None:
        self.camera_button.setText("Stop camera" if self.source is not None else "Start camera")
        self.ask_button.setEnabled(not self.is_asking)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802
        self.stop_camera()
        super().closeEvent(event)


def rgb_to_qimage(frame: np.ndarray) -> QtGui.QImage:
    """A QImage owning a copy of an RGB uint8 [H, W, 3] frame (fake sources, tests)."""
    h, w, _ = frame.shape
    data = np.ascontiguousarray(frame)
    return QtGui.QImage(data.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
