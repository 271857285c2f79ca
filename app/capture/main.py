"""Capture, assembled: register the global hotkey (trying each backend in preference order and
logging why each was skipped), the tray icon, the OCR flow and its result popup; `install(window)`
wires them into the main window.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.capture.key_combo import KeyCombo, parse_key_combo
from app.capture.models import HotkeyBackend, HotkeyError, HotkeyHandler
from app.capture.ocr_flow import OcrEngineBridge, OcrFlow
from app.capture.result_popup import OcrResultPopup
from app.capture.tray import CaptureTray
from app.chat.window import MainWindow
from app.engine_client import EngineClient

if TYPE_CHECKING:
    from app.capture.handlers.portal import PortalGlobalShortcut

log = logging.getLogger(__name__)

OS_SHORTCUT_HINT = (
    "bind the command `infinitevl ocr --region` to a key in your desktop's keyboard settings"
)

# imported when needed: a platform without a backend's library still gets the others
_HANDLERS = {
    HotkeyBackend.X11_GRAB: ("app.capture.handlers.x11", "X11KeyGrab"),
    HotkeyBackend.PORTAL: ("app.capture.handlers.portal", "PortalGlobalShortcut"),
}


def default_handlers() -> list[HotkeyHandler]:
    """One handler per backend whose library is installed, in HotkeyBackend's order."""
    handlers = []
    for backend in HotkeyBackend:
        module, name = _HANDLERS[backend]
        try:
            factory = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            log.info("hotkey backend %s skipped: %s", backend.value, exc)
            continue
        handlers.append(factory())
    return handlers


def register_hotkey(
    text: str, on_activated: Callable[[], None], handlers: list[HotkeyHandler] | None = None
) -> tuple[HotkeyHandler | None, str]:
    """Register `text` ("Ctrl+Alt+O") with the first backend that works here.

    Returns:
        (the handler now holding the combination or None, a line for the user saying which).
    """
    try:
        combo = parse_key_combo(text)
    except ValueError as exc:
        return None, f"Hotkey not set: {exc}; {OS_SHORTCUT_HINT}."
    reasons = []
    for handler in handlers if handlers is not None else default_handlers():
        reason = handler.unavailable_reason()
        if reason is not None:
            log.info("hotkey backend %s skipped: %s", handler.backend.value, reason)
            reasons.append(f"{handler.backend.value}: {reason}")
            continue
        try:
            handler.register(combo, on_activated)
        except HotkeyError as exc:
            log.warning("hotkey backend %s refused %s: %s", handler.backend.value, combo, exc)
            reasons.append(f"{handler.backend.value}: {exc}")
            continue
        log.info("hotkey %s registered through %s", combo, handler.backend.value)
        return handler, f"{combo} reads a screen region."
    return None, f"No global hotkey ({'; '.join(reasons)}); {OS_SHORTCUT_HINT}."


class CaptureFeature(QtCore.QObject):
    """The OCR capture of one app: hotkey, tray, flow, engine bridge and result popup."""

    status_changed = QtCore.Signal(str)  # a line for the status bar about the hotkey

    def __init__(
        self,
        client: EngineClient,
        send_to_chat: Callable[[np.ndarray], None] | None,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.flow = OcrFlow(parent=self)
        self.bridge = OcrEngineBridge(self.flow, client, parent=self)
        self.popup = OcrResultPopup(can_send=send_to_chat is not None)
        self.tray = CaptureTray(self)
        self.hotkey: HotkeyHandler | None = None
        self.hotkey_combo: KeyCombo | None = None
        self.hotkey_status = ""
        self._hotkey_text: str | None = None  # the setting last applied
        self._send_to_chat = send_to_chat
        self._connect()

    def _connect(self) -> None:
        self.flow.transcription_requested.connect(self.popup.show_reading)
        self.bridge.progress.connect(self.popup.show_progress)
        self.popup.cancel_requested.connect(self.bridge.cancel)
        self.flow.text_copied.connect(self.popup.show_copied)
        self.flow.capture_failed.connect(self.popup.show_failure)
        self.popup.send_to_chat_requested.connect(self._on_send_to_chat_requested)
        self.tray.capture_requested.connect(self.flow.start)

    def apply_hotkey_setting(self, text: str) -> str:
        """Register `text` as the global hotkey unless it already is; returns the outcome line
        for the user, or "" when nothing changed."""
        if text == self._hotkey_text:
            return ""
        self.release_hotkey()
        self._hotkey_text = text
        self.hotkey, self.hotkey_status = register_hotkey(text, self._on_hotkey_pressed)
        self.hotkey_combo = parse_key_combo(text) if self.hotkey is not None else None
        self.tray.set_hotkey_text(text if self.hotkey is not None else "")
        if self.hotkey is not None and self.hotkey.backend is HotkeyBackend.PORTAL:
            # the desktop answers later, maybe after asking the user
            portal = cast("PortalGlobalShortcut", self.hotkey)
            portal.bound.connect(self._on_portal_bound)
            portal.bind_failed.connect(self._on_portal_bind_failed)
            self.hotkey_status = f"Asked the desktop to bind {self.hotkey_combo}…"
        return self.hotkey_status

    def release_hotkey(self) -> None:
        if self.hotkey is not None:
            self.hotkey.unregister()
            self.hotkey = None

    @QtCore.Slot(str)
    def _on_portal_bound(self, keys: str) -> None:
        self.hotkey_status = f"{keys} reads a screen region (bound by the desktop)."
        self.tray.set_hotkey_text(keys)
        self.status_changed.emit(self.hotkey_status)

    @QtCore.Slot(str)
    def _on_portal_bind_failed(self, reason: str) -> None:
        self.release_hotkey()
        self.tray.set_hotkey_text("")
        self.hotkey_status = f"No global hotkey: {reason}; {OS_SHORTCUT_HINT}."
        self.status_changed.emit(self.hotkey_status)

    def _on_hotkey_pressed(self) -> None:
        # the handler may call from its own event path: start the capture from the event loop
        QtCore.QTimer.singleShot(0, self.flow.start)

    @QtCore.Slot(object)
    def _on_send_to_chat_requested(self, crop: np.ndarray) -> None:
        if self._send_to_chat is not None:
            self._send_to_chat(crop)


def install(window: MainWindow) -> CaptureFeature:
    """Add screen-region OCR to the main window: hotkey from settings, tray, Capture menu."""
    feature = CaptureFeature(window.engine_client, window.attach_image, parent=window)
    feature.status_changed.connect(window.status.notify)
    window.status.notify(feature.apply_hotkey_setting(str(window.settings.get("hotkey"))))
    menu = window.menuBar().addMenu("&Capture")
    action = menu.addAction("Read screen region")
    action.triggered.connect(feature.flow.start)
    feature.tray.show_window_requested.connect(window.showNormal)
    feature.tray.show_window_requested.connect(window.activateWindow)
    feature.tray.quit_requested.connect(window.close)

    def on_settings_changed() -> None:
        status = feature.apply_hotkey_setting(str(window.settings.get("hotkey")))
        if status:
            window.status.notify(status)

    window.settings_changed.connect(on_settings_changed)
    app = QtWidgets.QApplication.instance()
    assert isinstance(app, QtGui.QGuiApplication)
    app.aboutToQuit.connect(feature.release_hotkey)
    return feature
