"""The transcript of one conversation: messages rendered as Markdown (code blocks included),
attached images as thumbnails, a reply growing as tokens stream, and per-message actions.

Shows state and emits intent (edit, regenerate); copying to the clipboard happens here.
"""

from __future__ import annotations

import logging

from PySide6 import QtCore, QtGui, QtWidgets

from app.chat.images import thumbnail_of_file
from app.chat.markdown import markdown_html
from app.history.models import Message

log = logging.getLogger(__name__)

_ROLE_TITLE = {"user": "You", "assistant": "InfiniteVL", "event": "Memory"}


def stats_note(stats: dict[str, object]) -> str:
    """'12 tokens, 3.4 tok/s' (and 'stopped') from a stored reply's GenerationStats fields."""
    generated, seconds = stats.get("generated_tokens"), stats.get("decode_seconds")
    if not isinstance(generated, int) or not isinstance(seconds, int | float):
        return ""
    rate = generated / seconds if seconds > 0 else 0.0
    note = f"{generated} tokens, {rate:.1f} tok/s"
    return note + (" · stopped" if stats.get("stop_reason") == "cancelled" else "")


class MessageWidget(QtWidgets.QFrame):
    """One message: who, what (Markdown), its images, and its actions."""

    edit_requested = QtCore.Signal(int)  # message id
    regenerate_requested = QtCore.Signal(int)

    def __init__(self, message: Message, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.message = message
        self.text = message.content
        self.setObjectName(f"message-{message.role}")
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        title = QtWidgets.QLabel(f"<b>{_ROLE_TITLE[message.role]}</b>")
        self.note = QtWidgets.QLabel(stats_note(message.stats) if message.stats else "")
        self.note.setObjectName("message-note")
        self.body = QtWidgets.QLabel()
        # replies are Markdown; what the user typed and event lines (file names) show as written
        self._markdown = message.role == "assistant"
        self.body.setTextFormat(
            QtCore.Qt.TextFormat.RichText if self._markdown else QtCore.Qt.TextFormat.PlainText
        )
        self.body.setWordWrap(True)
        self.body.setTextInteractionFlags(
            QtCore.Qt.TextInteractionFlag.TextSelectableByMouse
            | QtCore.Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        # the transcript's width wins over long code lines (which are clipped, and copyable)
        self.body.setSizePolicy(
            QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred
        )
        self.copy_button = QtWidgets.QToolButton()
        self.copy_button.setText("Copy")
        self.copy_button.setToolTip("Copy this message as Markdown")
        self.edit_button = QtWidgets.QToolButton()
        self.edit_button.setText("Edit")
        self.edit_button.setToolTip("Edit and resend (Ctrl+E on the last message)")
        self.regenerate_button = QtWidgets.QToolButton()
        self.regenerate_button.setText("Regenerate")
        self.regenerate_button.setToolTip("Answer again (Ctrl+R)")
        head = QtWidgets.QHBoxLayout()
        head.addWidget(title)
        head.addWidget(self.note)
        head.addStretch(1)
        for button in (self.copy_button, self.edit_button, self.regenerate_button):
            head.addWidget(button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(head)
        if message.attachments:
            images = QtWidgets.QHBoxLayout()
            for path in message.attachments:
                label = QtWidgets.QLabel()
                label.setPixmap(thumbnail_of_file(path, 160))
                label.setToolTip(str(path.name))
                images.addWidget(label)
            images.addStretch(1)
            layout.addLayout(images)
        layout.addWidget(self.body)
        # only once parented: setVisible(True) on a parentless widget opens it as a window
        self.edit_button.setVisible(message.role == "user")
        self.regenerate_button.setVisible(False)
        self._render()
        self.copy_button.clicked.connect(self._on_copy_clicked)
        self.edit_button.clicked.connect(self._on_edit_clicked)
        self.regenerate_button.clicked.connect(self._on_regenerate_clicked)

    def append(self, text: str) -> None:
        self.text += text
        self._render()

    def set_text(self, text: str) -> None:
        self.text = text
        self._render()

    def set_note(self, note: str) -> None:
        self.note.setText(note)

    def _render(self) -> None:
        if not self.text:
            self.body.setText("…")
        elif self._markdown:
            shade = self.palette().color(QtGui.QPalette.ColorRole.AlternateBase)
            self.body.setText(markdown_html(self.text, shade))
        else:
            self.body.setText(self.text)

    @QtCore.Slot()
    def _on_copy_clicked(self) -> None:
        QtGui.QGuiApplication.clipboard().setText(self.text)

    @QtCore.Slot()
    def _on_edit_clicked(self) -> None:
        self.edit_requested.emit(self.message.id)

    @QtCore.Slot()
    def _on_regenerate_clicked(self) -> None:
        self.regenerate_requested.emit(self.message.id)


class TranscriptView(QtWidgets.QScrollArea):
    """The messages of the open conversation, newest at the bottom."""

    edit_requested = QtCore.Signal(int)
    regenerate_requested = QtCore.Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._inner = QtWidgets.QWidget()
        self._layout = QtWidgets.QVBoxLayout(self._inner)
        self._layout.addStretch(1)
        self.placeholder = QtWidgets.QLabel()
        self.placeholder.setWordWrap(True)
        self.placeholder.setTextFormat(QtCore.Qt.TextFormat.MarkdownText)
        self.placeholder.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self._layout.insertWidget(0, self.placeholder)
        self.setWidget(self._inner)
        self._widgets: list[MessageWidget] = []
        self.verticalScrollBar().rangeChanged.connect(self._on_range_changed)
        self._follow = True
        self._reveal_id: int | None = None

    def set_placeholder(self, markdown: str) -> None:
        self.placeholder.setText(markdown)
        self.placeholder.setVisible(bool(markdown) and not self._widgets)

    def show_messages(self, messages: list[Message]) -> None:
        for widget in self._widgets:
            widget.deleteLater()
        self._widgets = []
        for message in messages:
            self.add_message(message)
        self.placeholder.setVisible(not self._widgets and bool(self.placeholder.text()))
        self._follow = True

    def add_message(self, message: Message) -> MessageWidget:
        widget = MessageWidget(message, self._inner)
        widget.edit_requested.connect(self.edit_requested)
        widget.regenerate_requested.connect(self.regenerate_requested)
        self._layout.insertWidget(self._layout.count() - 1, widget)
        self._widgets.append(widget)
        self.placeholder.hide()
        self._update_actions()
        return widget

    def widget_for(self, message_id: int) -> MessageWidget | None:
        return next((w for w in self._widgets if w.message.id == message_id), None)

    def reveal(self, message_id: int) -> None:
        """Scroll to a message and mark it (a search hit)."""
        widget = self.widget_for(message_id)
        if widget is None:
            return
        self._follow = False
        for other in self._widgets:
            other.setFrameShadow(QtWidgets.QFrame.Shadow.Raised)
        widget.setFrameShadow(QtWidgets.QFrame.Shadow.Sunken)
        widget.setFocus()
        self._reveal_id = message_id
        # after the layout has placed the widgets of a freshly opened conversation
        QtCore.QTimer.singleShot(0, self._on_reveal_due)

    @QtCore.Slot()
    def _on_reveal_due(self) -> None:
        widget = None if self._reveal_id is None else self.widget_for(self._reveal_id)
        if widget is not None:
            self.ensureWidgetVisible(widget)

    def message_widgets(self) -> list[MessageWidget]:
        return list(self._widgets)

    def set_busy(self, busy: bool) -> None:
        for widget in self._widgets:
            widget.edit_button.setEnabled(not busy)
            widget.regenerate_button.setEnabled(not busy)

    def _update_actions(self) -> None:
        last_assistant = next(
            (w for w in reversed(self._widgets) if w.message.role != "event"), None
        )
        for widget in self._widgets:
            widget.regenerate_button.setVisible(
                widget is last_assistant and widget.message.role == "assistant"
            )

    @QtCore.Slot(int, int)
    def _on_range_changed(self, _low: int, high: int) -> None:
        bar = self.verticalScrollBar()
        if self._follow:
            bar.setValue(high)

    def scrollContentsBy(self, dx: int, dy: int) -> None:  # noqa: N802 (Qt override)
        super().scrollContentsBy(dx, dy)
        bar = self.verticalScrollBar()
        # follow a streaming reply only while the user has not scrolled up to read
        self._follow = bar.value() >= bar.maximum() - 4
