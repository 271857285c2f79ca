"""The conversation list: new, open, rename (F2 or double-click), delete, and full-text search.

Shows state and emits intent. While the search box holds text the list shows the matching
messages of every conversation (title and snippet); choosing one opens its conversation.
"""

from __future__ import annotations

import logging

from PySide6 import QtCore, QtGui, QtWidgets

from app.history.models import Conversation, SearchHit

log = logging.getLogger(__name__)

_ID = QtCore.Qt.ItemDataRole.UserRole
_MESSAGE = QtCore.Qt.ItemDataRole.UserRole + 1  # the matching message of a search hit


class ConversationList(QtWidgets.QWidget):
    new_requested = QtCore.Signal()
    conversation_selected = QtCore.Signal(int)
    message_selected = QtCore.Signal(int)  # a search hit chosen, after its conversation opened
    rename_requested = QtCore.Signal(int, str)
    delete_requested = QtCore.Signal(int)
    search_changed = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.search_box = QtWidgets.QLineEdit()
        self.search_box.setPlaceholderText("Search all messages (Ctrl+F)")
        self.search_box.setClearButtonEnabled(True)
        self.new_button = QtWidgets.QPushButton("New conversation")
        self.new_button.setToolTip("Ctrl+N")
        self.list = QtWidgets.QListWidget()
        self.list.setContextMenuPolicy(QtCore.Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.setEditTriggers(
            QtWidgets.QAbstractItemView.EditTrigger.EditKeyPressed
            | QtWidgets.QAbstractItemView.EditTrigger.DoubleClicked
        )
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search_box)
        layout.addWidget(self.list, 1)
        self._searching = False
        self._filling = False
        self._debounce = QtCore.QTimer(self, singleShot=True, interval=150)
        self._connect()

    def _connect(self) -> None:
        self.new_button.clicked.connect(self.new_requested)
        self.search_box.textChanged.connect(self._on_search_text_changed)
        self._debounce.timeout.connect(self._on_search_due)
        self.list.currentItemChanged.connect(self._on_current_item_changed)
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.customContextMenuRequested.connect(self._on_context_menu_requested)

    @property
    def is_searching(self) -> bool:
        return self._searching

    def show_conversations(self, conversations: list[Conversation], current: int | None) -> None:
        self._searching = False
        self._fill([(c.id, c.title, c.title, True) for c in conversations], current)

    def show_hits(self, hits: list[SearchHit]) -> None:
        self._searching = True
        rows = [
            (h.conversation_id, f"{h.conversation_title}\n{h.snippet}", h.snippet, False)
            for h in hits
        ]
        if not rows:
            rows = [(-1, "No message matches.", "", False)]
        self._fill(rows, None)
        for row, hit in enumerate(hits):
            self.list.item(row).setData(_MESSAGE, hit.message_id)

    def _fill(self, rows: list[tuple[int, str, str, bool]], current: int | None) -> None:
        self._filling = True
        self.list.clear()
        for conversation_id, text, tip, editable in rows:
            item = QtWidgets.QListWidgetItem(text)
            item.setData(_ID, conversation_id)
            item.setToolTip(tip)
            if editable:
                item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsEditable)
            if conversation_id < 0:
                item.setFlags(QtCore.Qt.ItemFlag.NoItemFlags)
            self.list.addItem(item)
            if conversation_id == current:
                self.list.setCurrentItem(item)
        self._filling = False

    def current_id(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else int(item.data(_ID))

    def start_rename(self) -> None:
        item = self.list.currentItem()
        if item is not None and not self._searching:
            self.list.editItem(item)

    def focus_search(self) -> None:
        self.search_box.setFocus()
        self.search_box.selectAll()

    @QtCore.Slot(str)
    def _on_search_text_changed(self, _text: str) -> None:
        self._debounce.start()

    @QtCore.Slot()
    def _on_search_due(self) -> None:
        self.search_changed.emit(self.search_box.text().strip())

    @QtCore.Slot(object, object)
    def _on_current_item_changed(
        self, item: QtWidgets.QListWidgetItem | None, _previous: object
    ) -> None:
        if item is not None and not self._filling and int(item.data(_ID)) >= 0:
            self.conversation_selected.emit(int(item.data(_ID)))
            if item.data(_MESSAGE) is not None:
                self.message_selected.emit(int(item.data(_MESSAGE)))

    @QtCore.Slot(object)
    def _on_item_changed(self, item: QtWidgets.QListWidgetItem) -> None:
        if not self._filling and not self._searching:
            self.rename_requested.emit(int(item.data(_ID)), item.text())

    @QtCore.Slot(QtCore.QPoint)
    def _on_context_menu_requested(self, pos: QtCore.QPoint) -> None:
        item = self.list.itemAt(pos)
        if item is None or self._searching:
            return
        menu = QtWidgets.QMenu(self)
        rename = menu.addAction("Rename (F2)")
        delete = menu.addAction("Delete")
        chosen = menu.exec(self.list.viewport().mapToGlobal(pos))
        if chosen is rename:
            self.list.editItem(item)
        elif chosen is delete:
            self.delete_requested.emit(int(item.data(_ID)))

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:  # noqa: N802 (Qt override)
        if event.key() == QtCore.Qt.Key.Key_Delete and self.current_id() is not None:
            self.delete_requested.emit(self.current_id())
            return
        super().keyPressEvent(event)
