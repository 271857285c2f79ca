"""The chat flow: turns what the widgets ask for into store writes and engine requests.

Owns the open conversation and the reply in flight. Stores the user's message before the
engine sees it (nothing typed is lost), the reply when it ends (also when stopped), and records
each state snapshot the engine thread wrote. Implements ``TargetSource`` for the engine client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6 import QtCore

from app.chat.composer import Composer
from app.chat.conversation_list import ConversationList
from app.chat.images import load_image_file, to_png
from app.chat.transcript_view import TranscriptView, stats_note
from app.engine_client import ChatResult, EngineClient, JobResult, SessionStatus
from app.history.models import SearchHit, SessionTarget, SnapshotInfo
from app.history.store import HistoryError, HistoryStore, search_messages
from app.status import StatusBar
from app.tasks import run_in_background
from engine import MAX_TEXT_CHARS, EngineError, SamplingParams

log = logging.getLogger(__name__)

NEW_TITLE = "New conversation"


@dataclass(slots=True)
class _Reply:
    request_id: int
    conversation_id: int
    message_id: int
    parts: list[str] = field(default_factory=list)


class ChatController(QtCore.QObject):
    """Glue between the chat widgets, the history store and the engine client."""

    conversation_opened = QtCore.Signal(int)
    reply_finished = QtCore.Signal(int, object)  # message id, ChatResult

    def __init__(
        self,
        store: HistoryStore,
        client: EngineClient,
        widgets: tuple[ConversationList, TranscriptView, Composer, StatusBar],
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.client = client
        self.conversations, self.transcript, self.composer, self.status = widgets
        self.current_id: int | None = None
        self.reply: _Reply | None = None
        self.session_status: SessionStatus | None = None  # of the open conversation, if live
        self._editing: int | None = None  # the user message being edited
        self._jobs: dict[int, int] = {}  # feed request id -> conversation id
        client.set_target_source(self)
        self._connect()

    def _connect(self) -> None:
        self.conversations.new_requested.connect(self.new_conversation)
        self.conversations.conversation_selected.connect(self.open_conversation)
        self.conversations.message_selected.connect(self.transcript.reveal)
        self.conversations.rename_requested.connect(self._on_rename_requested)
        self.conversations.search_changed.connect(self._on_search_changed)
        self.composer.send_requested.connect(self._on_send_requested)
        self.composer.stop_requested.connect(self.stop)
        self.composer.image_failed.connect(self.status.notify)
        self.transcript.edit_requested.connect(self.edit)
        self.transcript.regenerate_requested.connect(self.regenerate)
        self.client.token_streamed.connect(self._on_token_streamed)
        self.client.generation_finished.connect(self._on_generation_finished)
        self.client.generation_failed.connect(self._on_generation_failed)
        self.client.job_finished.connect(self._on_job_finished)
        self.client.job_failed.connect(self._on_job_failed)
        self.client.snapshot_saved.connect(self._on_snapshot_saved)
        self.client.status_changed.connect(self._on_status_changed)
        self.client.notice.connect(self.status.notify)

    # TargetSource, asked by the engine client

    def target(self, conversation_id: int) -> SessionTarget:
        return self.store.session_target(conversation_id)

    def add_event(self, conversation_id: int, text: str) -> int:
        message = self.store.add_message(conversation_id, "event", text)
        if conversation_id == self.current_id:
            self.transcript.add_message(message)
        return message.id

    def finish_event(self, message_id: int, text: str | None) -> None:
        try:
            message = self.store.message(message_id)
        except HistoryError:
            return  # its conversation was deleted meanwhile
        if text is None:
            self.store.delete_message(message_id)
        else:
            self.store.update_message(message_id, text)
        if message.conversation_id == self.current_id and self.reply is None:
            self.transcript.show_messages(self.store.messages(message.conversation_id))

    # conversations

    def refresh_list(self) -> None:
        if not self.conversations.is_searching:
            self.conversations.show_conversations(self.store.conversations(), self.current_id)

    @QtCore.Slot()
    def new_conversation(self) -> None:
        conversation = self.store.create_conversation(NEW_TITLE)
        self.open_conversation(conversation.id)

    @QtCore.Slot(int)
    def open_conversation(self, conversation_id: int) -> None:
        if conversation_id == self.current_id:
            return
        self.current_id = conversation_id
        self._editing = None
        self.transcript.show_messages(self.store.messages(conversation_id))
        self.status.clear_session()
        self.session_status = None
        if self.reply is not None and self.reply.conversation_id == conversation_id:
            widget = self.transcript.widget_for(self.reply.message_id)
            if widget is not None:
                widget.set_text("".join(self.reply.parts))
        self.refresh_list()
        if self.client.model_info is not None and self.reply is None:
            self.client.open_conversation(self.target(conversation_id))
        self.conversation_opened.emit(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        if self.reply is not None and self.reply.conversation_id == conversation_id:
            self.stop()
            self.status.notify("Stop the reply before deleting its conversation.")
            return
        self.store.delete_conversation(conversation_id)
        if conversation_id == self.current_id:
            self.current_id = None
            remaining = self.store.conversations()
            if remaining:
                self.open_conversation(remaining[0].id)
            else:
                self.new_conversation()
        self.refresh_list()

    @QtCore.Slot(int, str)
    def _on_rename_requested(self, conversation_id: int, title: str) -> None:
        try:
            self.store.rename(conversation_id, title)
        except HistoryError as exc:
            self.status.notify(str(exc))
        self.refresh_list()

    @QtCore.Slot(str)
    def _on_search_changed(self, text: str) -> None:
        if not text:
            self.conversations.show_conversations(self.store.conversations(), self.current_id)
            return
        db_path = self.store.db_path
        run_in_background(lambda: search_messages(db_path, text), self._on_search_done)

    def _on_search_done(self, hits: list[SearchHit]) -> None:
        if self.conversations.search_box.text().strip():
            self.conversations.show_hits(hits)

    def set_options(
        self, conversation_id: int, system_prompt: str, sampling: dict[str, Any]
    ) -> None:
        """Store a conversation's options; a new system prompt means re-reading its history."""
        if system_prompt != self.store.conversation(conversation_id).system_prompt:
            self.client.forget(conversation_id)
            self.status.notify("New system prompt: the next message re-reads this conversation.")
        self.store.set_options(conversation_id, system_prompt, sampling)

    # messages

    def sampling_params(self, conversation_id: int) -> SamplingParams:
        return SamplingParams(**self.store.conversation(conversation_id).sampling)

    @QtCore.Slot(str, list)
    def _on_send_requested(self, text: str, images: list[np.ndarray]) -> None:
        self.send(text, images)

    def send(self, text: str, images: list[np.ndarray]) -> bool:
        """Store the user's message and ask for a reply; False (with a notice) if it cannot."""
        if not self._can_ask():
            return False
        if len(text) > MAX_TEXT_CHARS:
            # refused before it is stored: the engine would refuse it, the transcript would
            # take minutes to lay it out; the text stays in the composer
            self.status.notify(
                f"This message is {len(text):,} characters long; one message holds at most "
                f"{MAX_TEXT_CHARS:,}. Split it, or open long documents in the reader."
            )
            return False
        if self.current_id is None:
            self.new_conversation()
        assert self.current_id is not None
        conversation_id = self.current_id
        try:
            params = self.sampling_params(conversation_id)
        except (EngineError, TypeError) as exc:
            self.status.notify(f"This conversation's sampling settings are invalid: {exc}")
            return False
        if self._editing is not None:
            self.store.delete_messages_from(conversation_id, self._editing)
            self._editing = None
            self.transcript.show_messages(self.store.messages(conversation_id))
        previous = self.store.messages(conversation_id)
        attachments = [(to_png(image), "image/png") for image in images]
        user = self.store.add_message(conversation_id, "user", text, attachments)
        if self.store.conversation(conversation_id).title == NEW_TITLE and text:
            self.store.rename(conversation_id, text.splitlines()[0][:48])
        target = self.store.session_target(
            conversation_id, previous[-1].id if previous else None, latest=False
        )
        self.transcript.add_message(user)
        self.composer.clear()
        self._ask(target, text, images, params)
        self.refresh_list()
        return True

    def _can_ask(self) -> bool:
        if self.reply is not None:
            self.status.notify("Wait for the reply, or stop it (Esc).")
            return False
        if self.client.model_info is None and not self.client.is_loading:
            self.status.notify("No model is loaded: choose a checkpoint directory in Settings.")
            return False
        return True

    def _ask(
        self, target: SessionTarget, text: str, images: list[np.ndarray], params: SamplingParams
    ) -> None:
        conversation_id = target.conversation_id
        reply = self.store.add_message(conversation_id, "assistant", "")
        self.transcript.add_message(reply)
        request_id = self.client.chat(target, text, images, params, reply.id)
        self.reply = _Reply(request_id, conversation_id, reply.id)
        self._set_busy(True)

    @QtCore.Slot()
    def stop(self) -> None:
        if self.reply is not None:
            self.client.cancel(self.reply.request_id)

    @QtCore.Slot(int)
    def regenerate(self, message_id: int) -> None:
        """Answer the user message before ``message_id`` again, from the state before it."""
        if self.current_id is None or not self._can_ask():
            return
        messages = self.store.messages(self.current_id)
        index = next((i for i, m in enumerate(messages) if m.id == message_id), None)
        users = [i for i in range(index or 0) if messages[i].role == "user"]
        if index is None or not users:
            return
        user = messages[users[-1]]
        try:
            images = [load_image_file(p) for p in user.attachments]
            params = self.sampling_params(self.current_id)
        except (ValueError, TypeError, EngineError) as exc:
            self.status.notify(f"Cannot regenerate: {exc}")
            return
        before = messages[users[-1] - 1].id if users[-1] > 0 else None
        self.store.delete_messages_from(self.current_id, message_id)
        self.transcript.show_messages(self.store.messages(self.current_id))
        target = self.store.session_target(self.current_id, before, latest=False)
        self._ask(target, user.content, images, params)

    @QtCore.Slot(int)
    def edit(self, message_id: int) -> None:
        """Put a user message back into the composer; sending it replaces it and what followed."""
        if self.current_id is None or self.reply is not None:
            return
        message = self.store.message(message_id)
        self.composer.clear()
        self.composer.set_text(message.content)
        for path in message.attachments:
            try:
                self.composer.add_image(load_image_file(path))
            except ValueError as exc:
                self.status.notify(str(exc))
        self._editing = message_id
        self.status.notify("Editing: sending replaces this message and everything after it.")

    def last_message_id(self, role: str) -> int | None:
        if self.current_id is None:
            return None
        found = [m.id for m in self.store.messages(self.current_id) if m.role == role]
        return found[-1] if found else None

    def _set_busy(self, busy: bool) -> None:
        self.composer.set_busy(busy)
        self.transcript.set_busy(busy)
        self.status.set_busy(busy)

    # engine results

    @QtCore.Slot(int, str)
    def _on_token_streamed(self, request_id: int, text: str) -> None:
        if self.reply is None or self.reply.request_id != request_id:
            return
        self.reply.parts.append(text)
        if self.reply.conversation_id == self.current_id:
            widget = self.transcript.widget_for(self.reply.message_id)
            if widget is not None:
                widget.append(text)

    @QtCore.Slot(int, object)
    def _on_generation_finished(self, request_id: int, result: ChatResult) -> None:
        if self.reply is None or self.reply.request_id != request_id:
            return
        reply, self.reply = self.reply, None
        stats = _stats_dict(result.stats)
        self.store.update_message(reply.message_id, result.text, stats)
        if result.snapshot is not None:
            self._record(result.snapshot)
        widget = self.transcript.widget_for(reply.message_id)
        if widget is not None:
            widget.set_text(result.text)
            widget.set_note(stats_note(stats))
        self._set_busy(False)
        if self.current_id is not None and self.current_id != reply.conversation_id:
            # the user moved on while it streamed: prepare the conversation now open
            self.client.open_conversation(self.target(self.current_id))
        self.reply_finished.emit(reply.message_id, result)

    @QtCore.Slot(int, str)
    def _on_generation_failed(self, request_id: int, message: str) -> None:
        if self.reply is None or self.reply.request_id != request_id:
            return
        reply, self.reply = self.reply, None
        # the user's message stays; the empty reply goes
        self.store.delete_message(reply.message_id)
        if reply.conversation_id == self.current_id:
            self.transcript.show_messages(self.store.messages(reply.conversation_id))
        self._set_busy(False)
        self.status.notify(f"The reply failed: {message}")

    @QtCore.Slot(int, object)
    def _on_job_finished(self, _request_id: int, result: JobResult) -> None:
        if result.snapshot is not None:
            self._record(result.snapshot)

    @QtCore.Slot(int, str)
    def _on_job_failed(self, _request_id: int, message: str) -> None:
        self.status.notify(message)

    @QtCore.Slot(object)
    def _on_snapshot_saved(self, snapshot: SnapshotInfo) -> None:
        self._record(snapshot)

    def _record(self, snapshot: SnapshotInfo) -> None:
        try:
            self.store.record_snapshot(snapshot)
        except HistoryError as exc:
            log.exception("recording %s failed", snapshot.path)
            self.status.notify(f"Could not record the saved state: {exc}")

    @QtCore.Slot(object)
    def _on_status_changed(self, status: SessionStatus) -> None:
        if status.conversation_id is not None and status.conversation_id == self.current_id:
            self.session_status = status
            self.status.set_session(status.tokens_seen, status.state_nbytes)


def _stats_dict(stats: Any) -> dict[str, object]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "prefill_seconds": round(stats.prefill_seconds, 3),
        "decode_seconds": round(stats.decode_seconds, 3),
        "stop_reason": stats.stop_reason,
    }
