"""The message composer: text input, image thumbnails (dropped, pasted or attached), Send/Stop.

Shows state and emits intent: it never calls the engine or the store. Image files are decoded
off the GUI thread.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.chat.images import check_array, load_image_file, qimage_to_array, thumbnail
from app.tasks import run_in_background

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _image_files(mime: QtCore.QMimeData) -> list[Path]:
    return [
        Path(url.toLocalFile())
        for url in mime.urls()
        if url.isLocalFile() and Path(url.toLocalFile()).suffix.lower() in IMAGE_SUFFIXES
    ]


class _InputEdit(QtWidgets.QPlainTextEdit):
    """Enter sends, Shift+Enter breaks the line; images pasted or dropped go to the composer."""

    submitted = QtCore.Signal()
    image_pasted = QtCore.Signal(object)  # QImage
    files_dropped = QtCore.Signal(list)  # list[Path]

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:  # noqa: N802 (Qt override)
        enter = event.key() in (QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter)
        if enter and not event.modifiers() & QtCore.Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QtCore.QMimeData) -> bool:  # noqa: N802
        return (
            source.hasImage() or bool(_image_files(source)) or super().canInsertFromMimeData(source)
        )

    def insertFromMimeData(self, source: QtCore.QMimeData) -> None:  # noqa: N802
        files = _image_files(source)
        if files:
            self.files_dropped.emit(files)
        elif source.hasImage():
            self.image_pasted.emit(QtGui.QImage(source.imageData()))
        else:
            super().insertFromMimeData(source)


class Composer(QtWidgets.QWidget):
    """Where the user writes a message and attaches images."""

    send_requested = QtCore.Signal(str, list)  # text, list[np.ndarray]
    stop_requested = QtCore.Signal()
    image_failed = QtCore.Signal(str)  # a file that could not be read, as a sentence

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._images: list[np.ndarray] = []
        self._busy = False
        self.input = _InputEdit(self)
        self.input.setPlaceholderText(
            "Message… (Enter sends, Shift+Enter new line; drop or paste images)"
        )
        self.input.setFixedHeight(84)
        self.thumbs = QtWidgets.QHBoxLayout()
        self.thumbs.setContentsMargins(0, 0, 0, 0)
        self.thumbs.addStretch(1)
        self.attach_button = QtWidgets.QPushButton("Attach…")
        self.attach_button.setToolTip("Attach an image file (Ctrl+O)")
        self.send_button = QtWidgets.QPushButton("Send")
        self.send_button.setDefault(True)
        self.stop_button = QtWidgets.QPushButton("Stop")
        self.stop_button.setToolTip("Stop the reply (Esc)")
        self.stop_button.hide()
        buttons = QtWidgets.QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.attach_button)
        buttons.addStretch(1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addLayout(buttons)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.thumbs)
        layout.addLayout(row)
        self.setAcceptDrops(True)
        self._connect()

    def _connect(self) -> None:
        self.input.submitted.connect(self.submit)
        self.input.image_pasted.connect(self._on_image_pasted)
        self.input.files_dropped.connect(self._on_files_dropped)
        self.send_button.clicked.connect(self.submit)
        self.stop_button.clicked.connect(self.stop_requested)
        self.attach_button.clicked.connect(self.choose_files)

    @property
    def images(self) -> list[np.ndarray]:
        return list(self._images)

    def text(self) -> str:
        return self.input.toPlainText()

    def set_text(self, text: str) -> None:
        self.input.setPlainText(text)
        self.input.moveCursor(QtGui.QTextCursor.MoveOperation.End)
        self.input.setFocus()

    def add_image(self, array: np.ndarray) -> None:
        array = check_array(array)
        self._images.append(array)
        button = QtWidgets.QToolButton(self)
        button.setIcon(QtGui.QIcon(thumbnail(array)))
        button.setIconSize(QtCore.QSize(56, 56))
        button.setToolTip(f"{array.shape[1]}×{array.shape[0]} image; click to remove")
        button.setAccessibleName("attached image")
        button.clicked.connect(self._on_thumb_clicked)
        self.thumbs.insertWidget(self.thumbs.count() - 1, button)

    def thumbnail_count(self) -> int:
        return len(self._images)

    def clear(self) -> None:
        """Empty the input and the thumbnails, and leave the keyboard focus in the input."""
        self.input.clear()
        self.input.setFocus()
        self._images.clear()
        while self.thumbs.count() > 1:
            item = self.thumbs.takeAt(0)
            widget = None if item is None else item.widget()
            if widget is not None:
                widget.deleteLater()

    def set_busy(self, busy: bool) -> None:
        """While a reply streams, Send becomes Stop; typing the next message stays possible."""
        self._busy = busy
        self.send_button.setVisible(not busy)
        self.stop_button.setVisible(busy)
        if not self.input.hasFocus():
            self.input.setFocus()

    def add_image_files(self, paths: list[Path]) -> None:
        for path in paths:
            run_in_background(partial(load_image_file, path), self.add_image, self._on_image_failed)

    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasImage() or _image_files(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802
        self.input.insertFromMimeData(event.mimeData())
        event.acceptProposedAction()

    @QtCore.Slot()
    def submit(self) -> None:
        """Ask to send the text and images (ignored while busy or when there is nothing)."""
        text = self.text().strip()
        if self._busy or (not text and not self._images):
            return
        self.send_requested.emit(text, self.images)

    @QtCore.Slot(object)
    def _on_image_pasted(self, image: QtGui.QImage) -> None:
        if image.isNull():
            self.image_failed.emit("The pasted image is empty.")
            return
        self.add_image(qimage_to_array(image))

    @QtCore.Slot(list)
    def _on_files_dropped(self, paths: list[Path]) -> None:
        self.add_image_files(paths)

    @QtCore.Slot()
    def choose_files(self) -> None:
        """Let the user pick image files to attach."""
        names, _ = QtWidgets.QFileDialog.getOpenFileNames(
            self, "Attach images", "", "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff)"
        )
        self.add_image_files([Path(n) for n in names])

    @QtCore.Slot()
    def _on_thumb_clicked(self) -> None:
        button = self.sender()
        if not isinstance(button, QtWidgets.QToolButton):
            return
        index = self.thumbs.indexOf(button)
        if index < 0:
            return
        del self._images[index]
        self.thumbs.takeAt(index)
        button.deleteLater()

    def _on_image_failed(self, message: str) -> None:
        self.image_failed.emit(message)
