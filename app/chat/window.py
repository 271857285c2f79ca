"""The main window: conversation list, transcript and composer, side panes, menus, status bar.

Lays out widgets and turns menu actions and shortcuts into calls on the ChatController; the
chat flow itself lives in controller.py. Other panes (capture, reader, webcam) join through
``add_side_pane``, ``attach_image``, ``engine_client`` and ``current_conversation_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.chat.composer import Composer
from app.chat.controller import ChatController
from app.chat.conversation_list import ConversationList
from app.chat.export import conversation_markdown
from app.chat.options_dialog import ConversationOptionsDialog
from app.chat.settings_dialog import SettingsDialog
from app.chat.transcript_view import TranscriptView
from app.engine_client import EngineClient
from app.history.store import HistoryStore
from app.settings import AppSettings
from app.status import StatusBar

log = logging.getLogger(__name__)


def markdown_escape(text: str) -> str:
    """``text`` shown as it is inside Markdown: each ASCII punctuation mark backslash-escaped (an
    error naming ``my_models/x_y`` or ``<locals>`` would turn italic or vanish as HTML)."""
    return "".join("\\" + c if c in _MARKDOWN_PUNCTUATION else c for c in text)


_MARKDOWN_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

NO_MODEL_TEXT = (
    "**No model is loaded.**\n\n{reason}\n\nOpen **Settings** (Ctrl+,) and choose a checkpoint "
    "directory (a folder with `config.json`, `*.safetensors` and `tokenizer.json`, for example "
    "a download of `hustvl/InfiniteVL`) or a GGUF model file, or download one from the Hugging "
    "Face hub in **File > Models…**. Your conversations are kept meanwhile."
)


class MainWindow(QtWidgets.QMainWindow):
    """The app's window. ``engine_client`` is the one way to the engine thread."""

    conversation_changed = QtCore.Signal(int)  # the conversation now open
    settings_changed = QtCore.Signal()

    def __init__(self, store: HistoryStore, client: EngineClient, settings: AppSettings) -> None:
        super().__init__()
        self.setWindowTitle("InfiniteVL Desktop")
        self.resize(1100, 760)
        self.store = store
        self.engine_client = client
        self.settings = settings
        self.conversations = ConversationList()
        self.transcript = TranscriptView()
        self.composer = Composer()
        self.banner = QtWidgets.QLabel("")
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.status = StatusBar()
        self.setStatusBar(self.status)
        chat = QtWidgets.QWidget()
        chat_layout = QtWidgets.QVBoxLayout(chat)
        chat_layout.addWidget(self.banner)
        chat_layout.addWidget(self.transcript, 1)
        chat_layout.addWidget(self.composer)
        splitter = QtWidgets.QSplitter()
        splitter.addWidget(self.conversations)
        splitter.addWidget(chat)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 840])
        self.setCentralWidget(splitter)
        self.controller = ChatController(
            store, client, (self.conversations, self.transcript, self.composer, self.status), self
        )
        self._view_menu: QtWidgets.QMenu | None = None
        self.setAcceptDrops(True)
        self._build_menus()
        self._connect()

    def _connect(self) -> None:
        self.conversations.delete_requested.connect(self._on_delete_requested)
        self.controller.conversation_opened.connect(self.conversation_changed)
        self.engine_client.model_loading.connect(self._on_model_loading)
        self.engine_client.model_loaded.connect(self._on_model_loaded)
        self.engine_client.model_load_failed.connect(self._on_model_load_failed)

    def _action(
        self, menu: QtWidgets.QMenu, text: str, shortcut: str | None, slot: Callable[[], Any]
    ) -> QtGui.QAction:
        action = menu.addAction(text)
        if shortcut:
            action.setShortcut(QtGui.QKeySequence(shortcut))
            action.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file = bar.addMenu("&File")
        self._action(file, "&New conversation", "Ctrl+N", self.controller.new_conversation)
        self._action(file, "&Export to Markdown…", "Ctrl+Shift+E", self.export_current)
        self._action(file, "&Settings…", "Ctrl+,", self.open_settings)
        file.addSeparator()
        self._action(file, "&Quit", "Ctrl+Q", self.close)
        conversation = bar.addMenu("&Conversation")
        self._action(conversation, "&Rename", "F2", self.conversations.start_rename)
        self._action(conversation, "&Delete", "Ctrl+Shift+Delete", self._delete_current)
        self._action(
            conversation, "&Search all messages", "Ctrl+F", self.conversations.focus_search
        )
        self._action(
            conversation, "&Options (system prompt, sampling)…", "Ctrl+Shift+O", self.open_options
        )
        message = bar.addMenu("&Message")
        self._action(message, "&Send", "Ctrl+Return", self.composer.submit)
        self._action(message, "S&top reply", "Esc", self.controller.stop)
        self._action(message, "&Regenerate last reply", "Ctrl+R", self._regenerate_last)
        self._action(message, "&Edit last message", "Ctrl+E", self._edit_last)
        self._action(message, "&Copy last reply", "Ctrl+Shift+C", self._copy_last)
        self._action(message, "&Attach image…", "Ctrl+O", self.composer.choose_files)
        self._view_menu = bar.addMenu("&View")

    # the API other panes use

    @property
    def current_conversation_id(self) -> int | None:
        return self.controller.current_id

    def add_side_pane(self, title: str, widget: QtWidgets.QWidget) -> QtWidgets.QDockWidget:
        """Dock ``widget`` at the right, with a toggle in the View menu; returns the dock."""
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(f"pane-{title}")
        dock.setWidget(widget)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
        docks = [d for d in self.findChildren(QtWidgets.QDockWidget) if d is not dock]
        if docks:
            self.tabifyDockWidget(docks[0], dock)
        # the chat keeps most of the width; the user can drag the pane wider
        self.resizeDocks([dock], [380], QtCore.Qt.Orientation.Horizontal)
        assert self._view_menu is not None
        self._view_menu.addAction(dock.toggleViewAction())
        return dock

    def attach_image(self, image: np.ndarray) -> None:
        """Put an image (uint8 [H, W, 3]) into the composer of the open conversation."""
        try:
            self.composer.add_image(image)
        except ValueError as exc:
            self.status.notify(f"Cannot attach this image: {exc}")
            return
        self.raise_()
        self.activateWindow()
        self.composer.input.setFocus()

    # actions

    def show_placeholder(self, reason: str) -> None:
        self.transcript.set_placeholder(NO_MODEL_TEXT.format(reason=markdown_escape(reason)))

    @QtCore.Slot(str)
    def _on_model_loading(self, what: str) -> None:
        self.status.set_loading(what)
        self.transcript.set_placeholder(f"Loading {what}… You can write meanwhile.")

    @QtCore.Slot(object)
    def _on_model_loaded(self, info: Any) -> None:
        self.status.set_model(info)
        self.transcript.set_placeholder("")
        self.banner.setVisible(bool(info.slow_warning))
        self.banner.setText(f"⚠ {info.slow_warning}" if info.slow_warning else "")
        if self.controller.current_id is not None and self.controller.reply is None:
            self.engine_client.open_conversation(self.controller.target(self.controller.current_id))

    @QtCore.Slot(str)
    def _on_model_load_failed(self, message: str) -> None:
        self.status.set_model(None)
        self.status.notify("The model could not be loaded.")
        self.show_placeholder(message)

    def _delete_current(self) -> None:
        if self.controller.current_id is not None:
            self._on_delete_requested(self.controller.current_id)

    @QtCore.Slot(int)
    def _on_delete_requested(self, conversation_id: int) -> None:
        title = self.store.conversation(conversation_id).title
        if self.confirm(f"Delete “{title}” and its saved memory?"):
            self.controller.delete_conversation(conversation_id)

    def confirm(self, question: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, "InfiniteVL Desktop", question)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def _regenerate_last(self) -> None:
        message_id = self.controller.last_message_id("assistant")
        if message_id is not None:
            self.controller.regenerate(message_id)

    def _edit_last(self) -> None:
        message_id = self.controller.last_message_id("user")
        if message_id is not None:
            self.controller.edit(message_id)

    def _copy_last(self) -> None:
        message_id = self.controller.last_message_id("assistant")
        if message_id is not None:
            QtGui.QGuiApplication.clipboard().setText(self.store.message(message_id).content)
            self.status.notify("Copied the last reply.")

    def export_current(self, path: Path | None = None) -> Path | None:
        conversation_id = self.controller.current_id
        if conversation_id is None:
            return None
        conversation = self.store.conversation(conversation_id)
        if path is None:
            name, _ = QtWidgets.QFileDialog.getSaveFileName(
                self, "Export to Markdown", f"{conversation.title}.md", "Markdown (*.md)"
            )
            if not name:
                return None
            path = Path(name)
        text = conversation_markdown(conversation, self.store.messages(conversation_id))
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.status.notify(f"Export failed: {exc}")
            return None
        self.status.notify(f"Exported to {path}")
        return path

    def open_options(self) -> None:
        conversation_id = self.controller.current_id
        if conversation_id is None:
            return
        conversation = self.store.conversation(conversation_id)
        dialog = ConversationOptionsDialog(conversation.system_prompt, conversation.sampling, self)
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            try:
                prompt, sampling = dialog.values()
            except ValueError as exc:  # the engine's InputError for out-of-range values
                self.status.notify(f"Options not saved: {exc}")
                return
            self.controller.set_options(conversation_id, prompt, sampling)

    def open_settings(self) -> None:
        before = [self.settings.get(key) for key in ("model_dir", "device", "quant")]
        if SettingsDialog(self.settings, self).exec() != QtWidgets.QDialog.DialogCode.Accepted:
            return
        self.settings_changed.emit()
        if [self.settings.get(key) for key in ("model_dir", "device", "quant")] != before:
            self.controller.stop()
            self.load_model()

    def load_model(self) -> None:
        model_dir = str(self.settings.get("model_dir")) or None
        self.engine_client.load_model(
            model_dir, str(self.settings.get("device")), str(self.settings.get("quant"))
        )

    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802 (Qt override)
        # an image dropped anywhere on the window goes to the composer
        self.composer.dragEnterEvent(event)

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802 (Qt override)
        self.composer.dropEvent(event)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt override)
        self.engine_client.shutdown()
        self.store.close()
        super().closeEvent(event)
