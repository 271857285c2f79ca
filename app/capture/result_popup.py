"""The small window that tells the OCR result: what was copied (or why nothing was), with one
click to send the capture into a chat. Desktop notifications are not clickable everywhere, so
this is the reliable way to that click.
"""

from __future__ import annotations

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

PREVIEW_CHARS = 300
SHOW_MS = 12000  # how long the popup stays without being touched
PREVIEW_SIZE = QtCore.QSize(420, 120)  # largest shown size of the captured region


class OcrResultPopup(QtWidgets.QFrame):
    """A frameless, always-on-top note in the corner of the screen."""

    send_to_chat_requested = QtCore.Signal(object)  # np.ndarray, the capture
    dismissed = QtCore.Signal()  # hidden: closed, timed out, or the capture was sent
    cancel_requested = QtCore.Signal()  # closed while the region was being read

    def __init__(self, can_send: bool = True, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowFlags(
            QtCore.Qt.WindowType.Tool
            | QtCore.Qt.WindowType.FramelessWindowHint
            | QtCore.Qt.WindowType.WindowStaysOnTopHint
        )
        self.setFrameShape(QtWidgets.QFrame.Shape.Box)
        self._crop: np.ndarray | None = None
        self.is_reading = False
        self.title = QtWidgets.QLabel()
        self.title.setStyleSheet("font-weight: bold")
        self.preview = QtWidgets.QLabel()
        self.preview.setWordWrap(True)
        self.preview.setMaximumWidth(420)
        self.capture_view = QtWidgets.QLabel()  # the captured region, small
        self.send_button = QtWidgets.QPushButton("Send capture to chat")
        self.send_button.setVisible(can_send)
        self.close_button = QtWidgets.QPushButton("Close")
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.close_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.capture_view)
        layout.addWidget(self.preview)
        layout.addLayout(buttons)
        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(SHOW_MS)
        self._connect()

    def _connect(self) -> None:
        self._timer.timeout.connect(self.hide)
        self.send_button.clicked.connect(self._on_send_clicked)
        self.close_button.clicked.connect(self._on_close_clicked)

    @QtCore.Slot(object)
    def show_reading(self, crop: np.ndarray) -> None:
        """While the model reads the region: say so, and let the user cancel."""
        self._crop = None
        self.is_reading = True
        h, w = crop.shape[:2]
        self._show_capture(crop)
        self.title.setText("Reading the selected region…")
        self.preview.setText(f"{w} × {h} pixels")
        self.send_button.setEnabled(False)
        self.close_button.setText("Cancel")
        self._present(timeout=False)

    @QtCore.Slot(int, int)
    def show_progress(self, done: int, total: int) -> None:
        """A region read piece by piece (its lines, a line's far-apart parts): which one the
        model is on."""
        if self.is_reading:
            self.title.setText(f"Reading the selected region… part {done + 1} of {total}")

    @QtCore.Slot(str, object)
    def show_copied(self, text: str, crop: np.ndarray | None) -> None:
        self._crop = crop
        self._end_reading()
        self._show_capture(crop)
        self.title.setText(f"Copied {len(text)} characters to the clipboard")
        more = "…" if len(text) > PREVIEW_CHARS else ""
        self.preview.setText(text[:PREVIEW_CHARS] + more)
        self.send_button.setEnabled(crop is not None)
        self._present()

    @QtCore.Slot(str)
    def show_failure(self, message: str) -> None:
        self._crop = None
        self._end_reading()
        self._show_capture(None)
        self.title.setText("Nothing copied")
        self.preview.setText(message)
        self.send_button.setEnabled(False)
        self._present()

    def _show_capture(self, crop: np.ndarray | None) -> None:
        if crop is None:
            self.capture_view.clear()
            self.capture_view.setVisible(False)
            return
        h, w, _ = crop.shape
        data = np.ascontiguousarray(crop)
        image = QtGui.QImage(data.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
        pixmap = QtGui.QPixmap.fromImage(image)
        if w > PREVIEW_SIZE.width() or h > PREVIEW_SIZE.height():
            pixmap = pixmap.scaled(PREVIEW_SIZE, QtCore.Qt.AspectRatioMode.KeepAspectRatio)
        self.capture_view.setPixmap(pixmap)
        self.capture_view.setVisible(True)

    def _end_reading(self) -> None:
        self.is_reading = False
        self.close_button.setText("Close")

    def _present(self, timeout: bool = True) -> None:
        self.adjustSize()
        screen = QtGui.QGuiApplication.primaryScreen()
        if screen is not None:
            area = screen.availableGeometry()
            self.move(area.right() - self.width() - 16, area.bottom() - self.height() - 16)
        self.show()
        self.raise_()
        if timeout:
            self._timer.start()
        else:
            self._timer.stop()

    def hideEvent(self, event: QtGui.QHideEvent) -> None:  # noqa: N802
        super().hideEvent(event)
        self.dismissed.emit()

    def enterEvent(self, event: QtGui.QEnterEvent) -> None:  # noqa: N802
        # keep it while the pointer is over it: the user is reading or about to click
        self._timer.stop()
        super().enterEvent(event)

    @QtCore.Slot()
    def _on_close_clicked(self) -> None:
        if self.is_reading:
            self._end_reading()
            self.cancel_requested.emit()
        self.hide()

    @QtCore.Slot()
    def _on_send_clicked(self) -> None:
        if self._crop is not None:
            self.send_to_chat_requested.emit(self._crop)
        self.hide()
