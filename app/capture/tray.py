"""The tray icon: a way to start a capture (and to reach the window) that needs no hotkey."""

from __future__ import annotations

import logging

from PySide6 import QtCore, QtGui, QtWidgets

log = logging.getLogger(__name__)


def app_icon() -> QtGui.QIcon:
    """A plain drawn icon (a frame with a text line), so the tray needs no image file."""
    pixmap = QtGui.QPixmap(64, 64)
    pixmap.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setPen(QtGui.QPen(QtGui.QColor(40, 110, 220), 6))
    painter.drawRoundedRect(6, 6, 52, 52, 10, 10)
    painter.fillRect(16, 28, 32, 8, QtGui.QColor(40, 110, 220))
    painter.end()
    return QtGui.QIcon(pixmap)


class CaptureTray(QtCore.QObject):
    """A QSystemTrayIcon with "Read screen region", "Show window" and "Quit"; absent where the
    desktop has no tray (then `icon` is None)."""

    capture_requested = QtCore.Signal()
    show_window_requested = QtCore.Signal()
    quit_requested = QtCore.Signal()

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.icon: QtWidgets.QSystemTrayIcon | None = None
        self.capture_action = QtGui.QAction("Read screen region", self)
        self.show_action = QtGui.QAction("Show InfiniteVL", self)
        self.quit_action = QtGui.QAction("Quit", self)
        self._menu = QtWidgets.QMenu()
        self._menu.addActions([self.capture_action, self.show_action])
        self._menu.addSeparator()
        self._menu.addAction(self.quit_action)
        self._connect()
        if not QtWidgets.QSystemTrayIcon.isSystemTrayAvailable():
            log.info("no system tray on this desktop; capture from the menu or the hotkey")
            return
        self.icon = QtWidgets.QSystemTrayIcon(app_icon(), self)
        self.icon.setToolTip("InfiniteVL: read a screen region")
        self.icon.setContextMenu(self._menu)
        self.icon.activated.connect(self._on_icon_activated)
        self.icon.show()

    def _connect(self) -> None:
        # through slots: PySide6 does not relay triggered(bool) into a signal without arguments
        self.capture_action.triggered.connect(self._on_capture_triggered)
        self.show_action.triggered.connect(self._on_show_triggered)
        self.quit_action.triggered.connect(self._on_quit_triggered)

    @QtCore.Slot()
    def _on_capture_triggered(self) -> None:
        self.capture_requested.emit()

    @QtCore.Slot()
    def _on_show_triggered(self) -> None:
        self.show_window_requested.emit()

    @QtCore.Slot()
    def _on_quit_triggered(self) -> None:
        self.quit_requested.emit()

    def set_hotkey_text(self, text: str) -> None:
        self.capture_action.setText(f"Read screen region\t{text}" if text else "Read screen region")

    @QtCore.Slot(QtWidgets.QSystemTrayIcon.ActivationReason)
    def _on_icon_activated(self, reason: QtWidgets.QSystemTrayIcon.ActivationReason) -> None:
        if reason == QtWidgets.QSystemTrayIcon.ActivationReason.Trigger:
            self.capture_requested.emit()
