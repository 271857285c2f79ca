"""Camera sources. `FrameSource` is what the webcam pane needs; `QtCameraSource` is the real
camera through QtMultimedia (QCamera -> QMediaCaptureSession -> QVideoSink). Tests use a fake
source that produces synthetic frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PySide6 import QtCore, QtGui

log = logging.getLogger(__name__)

# pixels per frame given to the model: ~256 vision tokens on Qwen2.5-VL's 28-pixel merged
# patches, which keeps a stream of one frame a second affordable on a CPU
FRAME_MAX_PIXELS = 448 * 448

FrameCallback = Callable[[QtGui.QImage, float], None]  # image, monotonic seconds
ErrorCallback = Callable[[str], None]


class FrameSource(Protocol):
    """Something that delivers video frames on the GUI thread until stopped."""

    name: str

    def start(self, on_frame: FrameCallback, on_error: ErrorCallback) -> None:
        """Begin delivering frames; problems after this go to on_error as user-facing text."""
        ...

    def stop(self) -> None: ...


def qimage_to_rgb(image: QtGui.QImage) -> np.ndarray:
    """A copy of a QImage as uint8 [H, W, 3] RGB: what the engine takes."""
    rgb = image.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    w, h, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    buf = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    return buf[:, : 3 * w].reshape(h, w, 3).copy()


def scaled_to_pixels(image: QtGui.QImage, max_pixels: int = FRAME_MAX_PIXELS) -> QtGui.QImage:
    """`image` shrunk (aspect kept) to at most max_pixels pixels; smaller images are kept."""
    w, h = image.width(), image.height()
    if w * h <= max_pixels:
        return image
    scale = (max_pixels / (w * h)) ** 0.5
    size = QtCore.QSize(max(1, int(w * scale)), max(1, int(h * scale)))
    return image.scaled(
        size,
        QtCore.Qt.AspectRatioMode.IgnoreAspectRatio,
        QtCore.Qt.TransformationMode.SmoothTransformation,
    )


def camera_unavailable_reason() -> str | None:
    """None when QtMultimedia offers a camera, else why the webcam cannot start."""
    try:
        from PySide6.QtMultimedia import QMediaDevices
    except ImportError as exc:
        return f"Qt's multimedia module is missing ({exc}); install PySide6-Addons"
    if not QMediaDevices.videoInputs():
        return "No camera found. Connect one and press Start again."
    return None


class QtCameraSource(QtCore.QObject):
    """The default (or a named) camera through QtMultimedia."""

    def __init__(
        self, device_id: bytes | None = None, parent: QtCore.QObject | None = None
    ) -> None:
        super().__init__(parent)
        from PySide6.QtMultimedia import QCamera, QMediaCaptureSession, QMediaDevices, QVideoSink

        inputs = QMediaDevices.videoInputs()
        chosen = [d for d in inputs if device_id is None or d.id().data() == device_id]
        device = chosen[0] if chosen else QMediaDevices.defaultVideoInput()
        self.name = device.description() or "camera"
        self._camera = QCamera(device)
        self._session = QMediaCaptureSession()
        self.video_sink = QVideoSink()
        self._session.setCamera(self._camera)
        self._session.setVideoSink(self.video_sink)
        self._on_frame: FrameCallback | None = None
        self._on_error: ErrorCallback | None = None
        self.video_sink.videoFrameChanged.connect(self._on_video_frame)
        self._camera.errorOccurred.connect(self._on_camera_error)

    def start(self, on_frame: FrameCallback, on_error: ErrorCallback) -> None:
        self._on_frame, self._on_error = on_frame, on_error
        self._camera.start()
        log.info("camera %s started", self.name)

    def stop(self) -> None:
        self._camera.stop()
        self._on_frame = None
        log.info("camera %s stopped", self.name)

    @QtCore.Slot(object)
    def _on_video_frame(self, frame: object) -> None:
        if self._on_frame is None:
            return
        image = frame.toImage()  # type: ignore[attr-defined]
        if not image.isNull():
            self._on_frame(image, time.monotonic())

    @QtCore.Slot(object, str)
    def _on_camera_error(self, error: object, text: str) -> None:
        log.warning("camera %s: %s (%s)", self.name, text, error)
        if self._on_error is not None:
            self._on_error(f"Camera error: {text or error}")
