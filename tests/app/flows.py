"""What the app tests do as a user would: wait for the model, type and send, wait for the reply."""

from __future__ import annotations

from typing import Any

from PySide6 import QtCore, QtGui

from app.chat.window import MainWindow
from app.engine_client import ChatResult

WAIT_MS = 30_000


def loaded(qtbot: Any, window: MainWindow) -> MainWindow:
    """``window`` once its engine has a model loaded."""
    if window.engine_client.model_info is None:
        with qtbot.waitSignal(window.engine_client.model_loaded, timeout=WAIT_MS):
            pass
    return window


def type_and_send(qtbot: Any, window: MainWindow, text: str) -> None:
    """Type ``text`` into the composer and press Return."""
    qtbot.keyClicks(window.composer.input, text)
    qtbot.keyClick(window.composer.input, QtCore.Qt.Key.Key_Return)


def ask(qtbot: Any, window: MainWindow, text: str) -> ChatResult:
    """Send ``text`` and wait for the reply; returns its ChatResult."""
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        type_and_send(qtbot, window, text)
    return finished.args[1]


def opened_status(qtbot: Any, window: MainWindow) -> Any:
    """The SessionStatus of the conversation the app opened on its engine thread."""
    qtbot.waitUntil(lambda: window.controller.session_status is not None, timeout=WAIT_MS)
    return window.controller.session_status


def placeholder_shown(window: MainWindow) -> str:
    """The transcript's placeholder as the user reads it (its Markdown rendered to plain text)."""
    document = QtGui.QTextDocument()
    document.setMarkdown(window.transcript.placeholder.text())
    return document.toPlainText()
