"""The one engine thread: ``EngineWorker`` owns the model and the live session; ``EngineClient``
is the GUI-thread facade every widget talks to.

Requests go in through queued signals; results come out as signals carrying plain values.
Every request gets its own CancelToken, set from the GUI thread and checked by the engine
between tokens or pages. The worker never touches SQLite: a ``SessionTarget`` tells it where a
conversation's state comes from, and it reports the snapshot files it wrote. Over 500 lines:
the request types, the worker and the facade mirror each other request by request, and read
best side by side.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PySide6 import QtCore

from app.history.files import write_atomically
from app.history.models import SessionTarget, SnapshotInfo, Turn
from engine import Cancelled, CancelToken, EngineError, InputError, SamplingParams

log = logging.getLogger(__name__)

STREAM_INTERVAL = 0.04  # seconds between two token_streamed signals of one reply


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """What the status bar shows about the live session."""

    conversation_id: int | None
    tokens_seen: int
    state_nbytes: int
    tokens_fed_total: int
    how: str  # "memory", "snapshot", "history" or "new": where the state came from


@dataclass(frozen=True, slots=True)
class ChatResult:
    stats: Any  # engine GenerationStats (.cancelled, .stop_reason, token counts, seconds)
    text: str  # the whole reply
    snapshot: SnapshotInfo | None
    status: SessionStatus


@dataclass(frozen=True, slots=True)
class JobResult:
    cancelled: bool
    done: int  # pages read (documents); frames given (frames)
    total: int
    snapshot: SnapshotInfo | None
    status: SessionStatus


@dataclass(frozen=True, slots=True)
class LoadRequest:
    path: str | None
    device: str
    quant: str = "none"  # engine.quant method applied to the linear layers at load time


@dataclass(frozen=True, slots=True)
class OpenRequest:
    target: SessionTarget
    cancel: CancelToken


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Add a user turn to the state at ``target`` and stream the reply.

    ``reply_message_id`` names the stored message the reply becomes (the state is "after" it);
    ``fork``: answer from a copy, leaving the conversation's state untouched; ``target`` None:
    answer from a fresh session (OCR, one-off questions).
    """

    id: int
    target: SessionTarget | None
    text: str
    images: tuple[np.ndarray, ...]
    params: SamplingParams
    cancel: CancelToken
    reply_message_id: int | None = None
    fork: bool = False
    system_prompt: str = ""


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """Feed document pages or video frames into the state at ``target``."""

    id: int
    target: SessionTarget
    kind: Literal["document", "frames"]
    items: tuple[Any, ...]
    cancel: CancelToken
    result_message_id: int | None = None
    save: bool = True


class TargetSource(Protocol):
    """What the client asks the history side (the chat controller) on the GUI thread."""

    def target(self, conversation_id: int) -> SessionTarget: ...

    def add_event(self, conversation_id: int, text: str) -> int: ...

    def finish_event(self, message_id: int, text: str | None) -> None:
        """Reword the event line once its job ended; None: the job failed, remove it."""


def load_engine(path: str | None, device: str, quant: str = "none") -> Any:
    """Default engine factory; imports the engine (and torch) on the engine thread.

    A GGUF model (``engine.backends``) runs as its file stores it: ``quant`` applies to
    safetensors checkpoints only.
    """
    from engine.backends import is_gguf
    from engine.backends import load_engine as open_model

    if path is not None and is_gguf(path):
        return open_model(path, device=device)
    return open_model(path, device=device, quant=quant)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class EngineWorker(QtCore.QObject):
    """Lives on the engine thread. Owns the Engine and one live session (of one conversation)."""

    model_loading = QtCore.Signal(str)  # what is being loaded
    model_loaded = QtCore.Signal(object)  # ModelInfo
    model_load_failed = QtCore.Signal(str)
    token_streamed = QtCore.Signal(int, str)  # request_id, text since the last emit
    generation_finished = QtCore.Signal(int, object)  # request_id, ChatResult
    generation_failed = QtCore.Signal(int, str)  # request_id, user-facing message
    job_progress = QtCore.Signal(int, int, int)  # request_id, done, total
    job_finished = QtCore.Signal(int, object)  # request_id, JobResult
    job_failed = QtCore.Signal(int, str)
    snapshot_saved = QtCore.Signal(object)  # SnapshotInfo written outside a request
    notice = QtCore.Signal(str)  # something the user should know (state rebuilt, ...)
    session_opened = QtCore.Signal(object)  # SessionStatus of a conversation made live

    def __init__(
        self, snapshots_dir: Path, engine_factory: Callable[[str | None, str, str], Any]
    ) -> None:
        super().__init__()
        self._snapshots_dir = snapshots_dir
        self._engine_factory = engine_factory
        self._engine: Any = None
        self._session: Any = None
        self._key: tuple[int, int | None] | None = None  # (conversation, last message in state)
        self._how = "new"
        self._dirty = False  # fed since the last snapshot (frames)

    @QtCore.Slot(object)
    def load(self, request: LoadRequest) -> None:
        what = request.path or "the embedded default model"
        self.model_loading.emit(what)
        self._save_if_dirty()
        self._engine = self._session = self._key = None
        try:
            self._engine = self._engine_factory(request.path, request.device, request.quant)
        except Exception as exc:  # worker boundary: a bad checkpoint is a message, not a crash
            if isinstance(exc, EngineError):  # no model, a bad checkpoint: the window says why
                log.warning("loading %s failed: %s", what, exc)
            else:  # a bug: keep its traceback
                log.exception("loading %s failed", what)
            self.model_load_failed.emit(str(exc) or type(exc).__name__)
            return
        self.model_loaded.emit(self._engine.info)

    @QtCore.Slot(object)
    def chat(self, request: ChatRequest) -> None:
        if request.cancel.is_set():
            self.generation_failed.emit(request.id, "Stopped before it started.")
            return
        pending: list[str] = []
        reply: list[str] = []
        try:
            session = self._chat_session(request)
            session.add_user_message(request.text, images=request.images, cancel=request.cancel)
            last_emit = time.monotonic()
            for delta in session.generate(request.params, request.cancel):
                pending.append(delta.text)
                if time.monotonic() - last_emit > STREAM_INTERVAL:
                    self.token_streamed.emit(request.id, "".join(pending))
                    reply.extend(pending)
                    pending, last_emit = [], time.monotonic()
            self.token_streamed.emit(request.id, "".join(pending))
            reply.extend(pending)
            snapshot = None
            if request.target is not None and not request.fork:
                self._key = (request.target.conversation_id, request.reply_message_id)
                self._dirty = True
                snapshot = self._try_save(session)
            result = ChatResult(session.last_stats, "".join(reply), snapshot, self._status(session))
        except Cancelled:
            # stopped before the reply began; the engine left the session as it was
            self.generation_failed.emit(request.id, "Stopped before the reply began.")
            return
        except Exception as exc:  # worker boundary: nothing may vanish into the event loop
            log.exception("generation %d failed", request.id)
            if request.target is not None and not request.fork:
                self._session = self._key = None  # half-fed: rebuild from the history next time
            self.generation_failed.emit(request.id, _message(exc))
            return
        self.generation_finished.emit(request.id, result)

    def _chat_session(self, request: ChatRequest) -> Any:
        if request.target is None:
            return self._require_engine().new_session(system_prompt=request.system_prompt or None)
        session = self._session_for(request.target, request.cancel)
        return session.fork() if request.fork else session

    @QtCore.Slot(object)
    def feed(self, request: FeedRequest) -> None:
        if request.cancel.is_set():
            self.job_failed.emit(request.id, "Cancelled before it started.")
            return
        total = len(request.items)
        done = [0] if request.kind == "document" else [total]

        def progress(n: int, _total: int | None) -> None:
            done[0] = n
            self.job_progress.emit(request.id, n, total)

        try:
            session = self._session_for(request.target, request.cancel)
            if request.kind == "document":
                session.feed_document(list(request.items), progress=progress, cancel=request.cancel)
            else:
                session.feed_frames(list(request.items), cancel=request.cancel)
            if request.result_message_id is not None:
                self._key = (request.target.conversation_id, request.result_message_id)
            self._dirty = True
            snapshot = self._try_save(session) if request.save else None
            cancelled = request.cancel.is_set()
            result = JobResult(cancelled, done[0], total, snapshot, self._status(session))
        except Exception as exc:  # worker boundary
            log.exception("feed %d failed", request.id)
            self._session = self._key = None  # part-fed: rebuild from the snapshot next time
            self.job_failed.emit(request.id, _message(exc))
            return
        self.job_finished.emit(request.id, result)

    @QtCore.Slot(object)
    def open(self, request: OpenRequest) -> None:
        """Make the target the live session now, so the first message starts at once."""
        target = request.target
        if request.cancel.is_set():
            return  # another conversation was opened since, or the app is closing
        try:
            session = self._session_for(target, request.cancel)
        except Cancelled:
            log.info("opening conversation %d cancelled", target.conversation_id)
            return
        except Exception as exc:  # worker boundary
            log.exception("opening conversation %d failed", target.conversation_id)
            self.notice.emit(f"Could not prepare this conversation: {_message(exc)}")
            return
        self.notice.emit(_HOW_TEXT[self._how].format(n=session.tokens_seen))
        self.session_opened.emit(self._status(session))

    @QtCore.Slot(int)
    def forget(self, conversation_id: int) -> None:
        """Drop the live session of a conversation whose saved states became stale."""
        if self._key is not None and self._key[0] == conversation_id:
            self._session = self._key = None
            self._dirty = False

    @QtCore.Slot()
    def close(self) -> None:
        """Save what is not saved yet; the last call before the thread quits."""
        self._save_if_dirty()

    def _require_engine(self) -> Any:
        if self._engine is None:
            raise EngineError("No model is loaded. Choose a model directory in Settings.")
        return self._engine

    def _session_for(self, target: SessionTarget, cancel: CancelToken) -> Any:
        engine = self._require_engine()
        key = (target.conversation_id, target.upto_message_id)
        if self._session is not None and self._key == key:
            self._how = "memory"
            return self._session
        self._save_if_dirty()
        self._session = self._key = None
        session, turns, self._how = None, target.history, "history" if target.history else "new"
        if target.snapshot is not None:
            try:
                session = engine.restore_session(target.snapshot)
                turns, self._how = target.turns_after_snapshot(), "snapshot"
            except (EngineError, OSError) as exc:
                log.warning("snapshot %s unusable: %s", target.snapshot, exc)
                self.notice.emit(f"The saved state could not be used ({exc}); re-reading history.")
        if session is None:
            session = engine.new_session(system_prompt=target.system_prompt or None)
        if len(turns) > 2:
            self.notice.emit(f"Reading {len(turns)} stored messages into memory…")
        lost = [t.text for t in turns if t.role == "event"]
        if lost:
            # pages and frames are not stored, so a rebuilt state lacks them
            self.notice.emit(f"Re-read without what was fed earlier: {'; '.join(lost)}")
        for turn in turns:
            _replay(session, turn, cancel)
        self._session, self._key, self._dirty = session, key, False
        return session

    def _save(self, session: Any, message_id: int | None) -> SnapshotInfo | None:
        if self._key is None:
            return None
        path = self._snapshots_dir / f"c{self._key[0]}-{uuid.uuid4().hex}.state"
        write_atomically(path, lambda tmp: session.save(tmp))
        self._dirty = False
        info = self._engine.info
        return SnapshotInfo(
            conversation_id=self._key[0],
            message_id=message_id,
            path=path,
            tokens_seen=session.tokens_seen,
            nbytes=session.state_nbytes,
            model=str(info.name),
        )

    def _try_save(self, session: Any) -> SnapshotInfo | None:
        """Save the live state; a failure is a notice (the previous snapshot stays, and the
        state stays dirty so the next save point tries again), never a lost reply."""
        if self._key is None:
            return None
        try:
            return self._save(session, self._key[1])
        except Exception as exc:  # worker boundary: report, keep the previous snapshot
            log.exception("saving the state of conversation %d failed", self._key[0])
            self.notice.emit(f"Could not save the conversation's state: {_message(exc)}")
            return None

    def _save_if_dirty(self) -> None:
        if not (self._dirty and self._session is not None and self._key is not None):
            return
        snapshot = self._try_save(self._session)
        if snapshot is not None:
            self.snapshot_saved.emit(snapshot)

    def _status(self, session: Any) -> SessionStatus:
        return SessionStatus(
            conversation_id=None if self._key is None else self._key[0],
            tokens_seen=session.tokens_seen,
            state_nbytes=session.state_nbytes,
            tokens_fed_total=session.tokens_fed_total,
            how=self._how,
        )


_HOW_TEXT = {
    "memory": "Continuing from memory ({n} tokens).",
    "snapshot": "Resumed from the saved state ({n} tokens), without re-reading the history.",
    "history": "No saved state: re-read the conversation from its history ({n} tokens).",
    "new": "New conversation.",
}


def _replay(session: Any, turn: Turn, cancel: CancelToken) -> None:
    if turn.role == "user":
        images = tuple(_read_image(p) for p in turn.images if p.exists())
        try:
            session.add_user_message(turn.text, images=images, cancel=cancel)
        except InputError as exc:
            # a message the engine refused when it was sent (its reply was removed) stays in
            # the history; skipping it keeps the rest of the conversation usable
            log.warning("message %d is not replayed: %s", turn.message_id, exc)
    elif turn.role == "assistant":
        session.add_assistant_message(turn.text, cancel=cancel)
    else:
        log.info("event %d (%s) cannot be replayed from the history", turn.message_id, turn.text)


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, EngineError) else f"{type(exc).__name__}: {text}"


class EngineClient(QtCore.QObject):
    """The GUI-thread face of the engine thread. Every method returns at once.

    Methods that start work return a request id; its results arrive as this object's signals
    (emitted on the GUI thread, so any callable may be connected): ``token_streamed``,
    ``generation_finished``/``generation_failed`` for replies, ``job_progress``,
    ``job_finished``/``job_failed`` for document pages and frames. ``cancel(id)`` stops one.
    """

    model_loading = QtCore.Signal(str)
    model_loaded = QtCore.Signal(object)
    model_load_failed = QtCore.Signal(str)
    token_streamed = QtCore.Signal(int, str)
    generation_finished = QtCore.Signal(int, object)
    generation_failed = QtCore.Signal(int, str)
    job_progress = QtCore.Signal(int, int, int)
    job_finished = QtCore.Signal(int, object)
    job_failed = QtCore.Signal(int, str)
    snapshot_saved = QtCore.Signal(object)
    notice = QtCore.Signal(str)
    status_changed = QtCore.Signal(object)  # SessionStatus after every finished request

    _load_requested = QtCore.Signal(object)
    _chat_requested = QtCore.Signal(object)
    _feed_requested = QtCore.Signal(object)
    _open_requested = QtCore.Signal(object)
    _forget_requested = QtCore.Signal(int)

    def __init__(
        self,
        snapshots_dir: Path,
        engine_factory: Callable[[str | None, str, str], Any] = load_engine,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.model_info: Any = None
        self.is_loading = False
        self._targets: TargetSource | None = None
        self._tokens: dict[int, CancelToken] = {}
        self._events: dict[int, tuple[int, str]] = {}  # request id -> (event message, label)
        self._open_token = CancelToken()
        self._live_requests: set[int] = set()  # chats on a conversation's own (not forked) state
        self._ids = itertools.count(1)
        self._thread = QtCore.QThread()
        self._thread.setObjectName("engine")
        self._worker = EngineWorker(snapshots_dir, engine_factory)
        self._worker.moveToThread(self._thread)
        self._connect()
        self._thread.start()

    def _connect(self) -> None:
        w = self._worker
        self._load_requested.connect(w.load)
        self._chat_requested.connect(w.chat)
        self._feed_requested.connect(w.feed)
        self._open_requested.connect(w.open)
        self._forget_requested.connect(w.forget)
        w.model_loading.connect(self._on_model_loading)
        w.model_loaded.connect(self._on_model_loaded)
        w.model_load_failed.connect(self._on_model_load_failed)
        w.token_streamed.connect(self._on_token_streamed)
        w.generation_finished.connect(self._on_generation_finished)
        w.generation_failed.connect(self._on_generation_failed)
        w.job_progress.connect(self._on_job_progress)
        w.job_finished.connect(self._on_job_finished)
        w.job_failed.connect(self._on_job_failed)
        w.snapshot_saved.connect(self._on_snapshot_saved)
        w.notice.connect(self._on_notice)
        w.session_opened.connect(self._on_session_opened)

    def not_ready_reason(self, conversation_id: int | None) -> str | None:
        """Why a request into ``conversation_id`` cannot start now (for the pane to show), or
        None when it can: a conversation is open and a model is loaded."""
        if conversation_id is None:
            return "open or start a conversation first"
        if self.model_info is None:
            return "no model is loaded yet"
        return None

    def set_target_source(self, source: TargetSource) -> None:
        """Who turns a conversation id into a SessionTarget (the chat controller)."""
        self._targets = source

    def _target(self, conversation_id: int) -> SessionTarget:
        if self._targets is None:
            raise RuntimeError("EngineClient.set_target_source was not called")
        return self._targets.target(conversation_id)

    def _new_request(self) -> tuple[int, CancelToken]:
        request_id = next(self._ids)
        token = CancelToken()
        self._tokens[request_id] = token
        return request_id, token

    # requests

    def load_model(self, path: str | None, device: str = "auto", quant: str = "none") -> None:
        """Load a checkpoint directory (None: the embedded default) on the engine thread."""
        self.is_loading = True
        self._load_requested.emit(LoadRequest(path, device, quant))

    def open_conversation(self, target: SessionTarget) -> None:
        """Restore the conversation's state ahead of its next message.

        Opening another conversation (or quitting) cancels a restore still running.
        """
        self._open_token.set()
        self._open_token = CancelToken()
        self._open_requested.emit(OpenRequest(target, self._open_token))

    def forget(self, conversation_id: int) -> None:
        """Make the engine thread drop the conversation's live state (e.g. new system prompt)."""
        self._forget_requested.emit(conversation_id)

    def chat(
        self,
        target: SessionTarget,
        text: str,
        images: Sequence[np.ndarray],
        params: SamplingParams,
        reply_message_id: int,
    ) -> int:
        """Add a user turn to the conversation's state and stream the reply; save the state."""
        request_id, token = self._new_request()
        self._live_requests.add(request_id)
        self._chat_requested.emit(
            ChatRequest(request_id, target, text, tuple(images), params, token, reply_message_id)
        )
        return request_id

    def ask_forked(
        self,
        conversation_id: int | None,
        text: str,
        images: Sequence[np.ndarray] = (),
        params: SamplingParams | None = None,
        system_prompt: str = "",
    ) -> int:
        """Ask about a copy of the conversation's state (None: a fresh session, e.g. OCR).

        The conversation's own state is left untouched; the reply streams as for ``chat``.
        """
        request_id, token = self._new_request()
        target = None if conversation_id is None else self._target(conversation_id)
        self._chat_requested.emit(
            ChatRequest(
                request_id,
                target,
                text,
                tuple(images),
                params or SamplingParams(),
                token,
                fork=target is not None,
                system_prompt=system_prompt,
            )
        )
        return request_id

    def read_document(self, conversation_id: int, pages: Sequence[Any], label: str) -> int:
        """Feed document pages into the conversation's state, with ``job_progress``.

        The conversation's transcript gets an event line naming ``label``; the state is saved
        afterwards (also after Cancel: the pages read so far stay in memory).
        """
        request_id, token = self._new_request()
        target = self._target(conversation_id)
        assert self._targets is not None
        event_id = self._targets.add_event(
            conversation_id, f"Reading {label} ({len(pages)} pages) into memory…"
        )
        self._events[request_id] = (event_id, label)
        self._feed_requested.emit(
            FeedRequest(request_id, target, "document", tuple(pages), token, event_id)
        )
        return request_id

    def feed_frames(self, conversation_id: int, frames: Sequence[np.ndarray]) -> int:
        """Feed camera frames into the conversation's state; saved at the next save point."""
        request_id, token = self._new_request()
        target = self._target(conversation_id)
        self._feed_requested.emit(
            FeedRequest(request_id, target, "frames", tuple(frames), token, save=False)
        )
        return request_id

    def cancel(self, request_id: int) -> None:
        token = self._tokens.get(request_id)
        if token is not None:
            token.set()

    def is_running(self, request_id: int) -> bool:
        return request_id in self._tokens

    def shutdown(self) -> None:
        """Cancel everything, let the worker save, then join the engine thread."""
        if not self._thread.isRunning():
            return
        self._open_token.set()
        for token in self._tokens.values():
            token.set()
        # blocks until the running request has seen its token and close() has saved the state
        QtCore.QMetaObject.invokeMethod(
            self._worker, "close", QtCore.Qt.ConnectionType.BlockingQueuedConnection
        )
        self._thread.quit()
        self._thread.wait()
        # deliver what the worker emitted last (the final snapshot) before the app goes
        QtCore.QCoreApplication.sendPostedEvents(self, 0)

    # worker results, on the GUI thread

    @QtCore.Slot(str)
    def _on_model_loading(self, what: str) -> None:
        self.model_loading.emit(what)

    @QtCore.Slot(object)
    def _on_model_loaded(self, info: object) -> None:
        self.is_loading = False
        self.model_info = info
        self.model_loaded.emit(info)

    @QtCore.Slot(str)
    def _on_model_load_failed(self, message: str) -> None:
        self.is_loading = False
        self.model_info = None
        self.model_load_failed.emit(message)

    @QtCore.Slot(int, str)
    def _on_token_streamed(self, request_id: int, text: str) -> None:
        if text:
            self.token_streamed.emit(request_id, text)

    @QtCore.Slot(int, object)
    def _on_generation_finished(self, request_id: int, result: ChatResult) -> None:
        self._tokens.pop(request_id, None)
        self.generation_finished.emit(request_id, result)
        if request_id in self._live_requests:
            self._live_requests.discard(request_id)
            self.status_changed.emit(result.status)

    @QtCore.Slot(int, str)
    def _on_generation_failed(self, request_id: int, message: str) -> None:
        self._tokens.pop(request_id, None)
        self._live_requests.discard(request_id)
        self.generation_failed.emit(request_id, message)

    @QtCore.Slot(int, int, int)
    def _on_job_progress(self, request_id: int, done: int, total: int) -> None:
        self.job_progress.emit(request_id, done, total)

    @QtCore.Slot(int, object)
    def _on_job_finished(self, request_id: int, result: JobResult) -> None:
        self._tokens.pop(request_id, None)
        event = self._events.pop(request_id, None)
        if event is not None and self._targets is not None:
            text = f"Read {event[1]} ({result.done} of {result.total} pages) into memory."
            self._targets.finish_event(event[0], text + (" Cancelled." if result.cancelled else ""))
        self.job_finished.emit(request_id, result)
        self.status_changed.emit(result.status)

    @QtCore.Slot(int, str)
    def _on_job_failed(self, request_id: int, message: str) -> None:
        self._tokens.pop(request_id, None)
        event = self._events.pop(request_id, None)
        if event is not None and self._targets is not None:
            self._targets.finish_event(event[0], None)
        self.job_failed.emit(request_id, message)

    @QtCore.Slot(object)
    def _on_snapshot_saved(self, snapshot: SnapshotInfo) -> None:
        self.snapshot_saved.emit(snapshot)

    @QtCore.Slot(str)
    def _on_notice(self, text: str) -> None:
        self.notice.emit(text)

    @QtCore.Slot(object)
    def _on_session_opened(self, status: SessionStatus) -> None:
        self.status_changed.emit(status)
