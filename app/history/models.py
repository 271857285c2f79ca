"""Plain records read from the history store and handed to the engine thread.

Frozen dataclasses only: they cross threads (GUI thread <-> engine thread) by value.
Knows nothing of Qt, SQLite or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["user", "assistant", "event"]


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    title: str
    system_prompt: str
    sampling: dict[str, Any]  # SamplingParams fields
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    conversation_id: int
    role: Role
    content: str
    created_at: float
    attachments: tuple[Path, ...] = ()  # image files, in the order they were sent
    stats: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A saved engine state of a conversation, as recorded in the database."""

    id: int
    conversation_id: int
    message_id: int | None  # the last message the state includes
    path: Path
    tokens_seen: int
    nbytes: int
    model: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    conversation_id: int
    conversation_title: str
    message_id: int
    snippet: str  # with the matched words between [ and ]


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message to feed into a session when its state must be rebuilt."""

    message_id: int
    role: Role
    text: str
    images: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionTarget:
    """Which state a request needs: conversation C just after message ``upto_message_id``.

    The engine thread reuses its in-memory session when it is already there, else restores
    ``snapshot`` (the state after ``snapshot_message_id``) and feeds the turns after it, else
    starts a new session and feeds every turn of ``history``.
    """

    conversation_id: int
    upto_message_id: int | None
    system_prompt: str = ""
    snapshot: Path | None = None
    snapshot_message_id: int | None = None
    history: tuple[Turn, ...] = field(default=())

    def turns_after_snapshot(self) -> tuple[Turn, ...]:
        if self.snapshot_message_id is None:
            return self.history
        ids = [t.message_id for t in self.history]
        if self.snapshot_message_id not in ids:
            return self.history
        return self.history[ids.index(self.snapshot_message_id) + 1 :]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A state file the engine thread wrote; the GUI thread records it in the store."""

    conversation_id: int
    message_id: int | None
    path: Path
    tokens_seen: int
    nbytes: int
    model: str
