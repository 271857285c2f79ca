"""The history: conversations, messages, attachments and state snapshots, in SQLite.

One database file in WAL mode (sqlite-utils), schema.sql plus ``MIGRATIONS`` steps counted by
``PRAGMA user_version``; FTS5 over message text. Attachments are content-addressed files and
snapshots are engine-state files: the database records their names, never the blobs. Everything
is created readable by the user alone. Used from the GUI thread; ``search_messages`` opens its
own read-only connection so it can run in the background. Knows nothing of Qt or the engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import sqlite_utils

from app.history.files import FILE_MODE, private_dir, write_bytes_atomically
from app.history.models import (
    Conversation,
    Message,
    SearchHit,
    SessionTarget,
    SnapshotInfo,
    SnapshotRecord,
    Turn,
)

log = logging.getLogger(__name__)

DB_NAME = "history.sqlite3"
# step N brings a database from user_version N-1 to N; step 1 is the whole of schema.sql
MIGRATIONS: list[str] = [resources.files("app.history").joinpath("schema.sql").read_text("utf-8")]
# the newest snapshots kept per conversation; older turns are rebuilt from the history (ADR 001)
KEEP_SNAPSHOTS = 4
# search ranks the newest this many matching messages, best first (see search_messages)
SEARCH_WINDOW = 500
_MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class HistoryError(Exception):
    """A history database this app cannot use; the message says why and where."""


def _connect(path: Path) -> sqlite3.Connection:
    # create the file ourselves so it is private from its first byte; sqlite gives the -wal
    # and -shm files the same permissions as the database
    fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    os.close(fd)
    os.chmod(path, FILE_MODE)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Apply the missing ``MIGRATIONS`` steps, each in one transaction; return the version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise HistoryError(
            f"{path} has schema version {version}, newer than this app knows "
            f"({len(MIGRATIONS)}); update the app or choose another data directory"
        )
    for number in range(version + 1, len(MIGRATIONS) + 1):
        log.info("migrating %s to schema version %d", path, number)
        try:
            conn.executescript(
                f"BEGIN;\n{MIGRATIONS[number - 1]}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            conn.rollback()
            raise HistoryError(f"cannot migrate {path} to version {number}: {exc}") from exc
    return len(MIGRATIONS)


def _fts_query(text: str) -> str:
    # every word must match, the last one as a prefix (search as you type); quoting each word
    # keeps FTS5 syntax characters in user input from raising
    words = re.findall(r"\w+", text, flags=re.UNICODE)
    if not words:
        return ""
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def search_messages(db_path: Path, text: str, limit: int = 50) -> list[SearchHit]:
    """Messages matching all words of ``text``: the best of the newest ``SEARCH_WINDOW``."""
    query = _fts_query(text)
    if not query:
        return []
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        # rank only the newest SEARCH_WINDOW matches: bm25 over every match of a common word
        # takes ~0.5 s at 100,000 messages, the newest ones in FTS5's rowid order ~10 ms
        rows = conn.execute(
            """SELECT m.conversation_id, c.title, m.id, f.snippet
               FROM (SELECT rowid, rank, snippet(messages_fts, 0, '[', ']', '…', 12) AS snippet
                     FROM messages_fts WHERE messages_fts MATCH ?
                     ORDER BY rowid DESC LIMIT ?) AS f
               JOIN messages m ON m.id = f.rowid
               JOIN conversations c ON c.id = m.conversation_id
               ORDER BY f.rank LIMIT ?""",
            (query, SEARCH_WINDOW, limit),
        ).fetchall()
    finally:
        conn.close()
    return [SearchHit(int(r[0]), r[1], int(r[2]), r[3]) for r in rows]


class HistoryStore:
    """The history database of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.attachments_dir = self.data_dir / "attachments"
        self.snapshots_dir = self.data_dir / "snapshots"
        self.db_path = self.data_dir / DB_NAME
        try:
            for path in (self.data_dir, self.attachments_dir, self.snapshots_dir):
                private_dir(path)
        except OSError as exc:
            raise HistoryError(f"cannot use the data directory {self.data_dir}: {exc}") from exc
        try:
            conn = _connect(self.db_path)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            self.version = migrate(conn, self.db_path)
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"cannot open the history {self.db_path}: {exc}") from exc
        self._remove_unrecorded_snapshots()

    def close(self) -> None:
        self.db.conn.close()

    # conversations

    def _conversation(self, row: dict[str, Any]) -> Conversation:
        return Conversation(
            id=row["id"],
            title=row["title"],
            system_prompt=row["system_prompt"],
            sampling=json.loads(row["sampling"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def conversations(self) -> list[Conversation]:
        rows = self.db.query("SELECT * FROM conversations ORDER BY updated_at DESC, id DESC")
        return [self._conversation(r) for r in rows]

    def conversation(self, conversation_id: int) -> Conversation:
        rows = list(self.db.query("SELECT * FROM conversations WHERE id = ?", [conversation_id]))
        if not rows:
            raise HistoryError(f"no conversation {conversation_id}")
        return self._conversation(rows[0])

    def create_conversation(
        self, title: str = "New conversation", system_prompt: str = ""
    ) -> Conversation:
        now = time.time()
        with self.db.conn:
            cur = self.db.execute(
                "INSERT INTO conversations (title, system_prompt, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                [title, system_prompt, now, now],
            )
        return self.conversation(int(cur.lastrowid or 0))

    def rename(self, conversation_id: int, title: str) -> None:
        title = title.strip()
        if not title:
            raise HistoryError("a conversation title cannot be empty")
        self._update_conversation(conversation_id, title=title)

    def set_options(
        self, conversation_id: int, system_prompt: str, sampling: dict[str, Any]
    ) -> None:
        """Store the system prompt and sampling; a new prompt makes the saved states stale."""
        if system_prompt != self.conversation(conversation_id).system_prompt:
            self.drop_snapshots(conversation_id)
        self._update_conversation(
            conversation_id, system_prompt=system_prompt, sampling=json.dumps(sampling)
        )

    def _update_conversation(self, conversation_id: int, **fields: object) -> None:
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db.conn:
            self.db.execute(
                f"UPDATE conversations SET {sets} WHERE id = ?", [*fields.values(), conversation_id]
            )

    def delete_conversation(self, conversation_id: int) -> None:
        files = [s.path for s in self.snapshots(conversation_id)]
        with self.db.conn:
            self.db.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])
        for path in files:
            path.unlink(missing_ok=True)
        self._collect_attachments()

    # messages and attachments

    def add_attachment(self, payload: bytes, mime: str) -> Path:
        """Store ``payload`` once under its SHA-256; return its file."""
        if mime not in _MIME_EXT:
            raise HistoryError(f"unsupported attachment type {mime!r}")
        sha = hashlib.sha256(payload).hexdigest()
        path = self.attachment_path(sha, mime)
        if not path.exists():
            private_dir(path.parent)
            write_bytes_atomically(path, payload)
        with self.db.conn:
            self.db.execute(
                "INSERT OR IGNORE INTO attachments (sha256, mime, nbytes) VALUES (?, ?, ?)",
                [sha, mime, len(payload)],
            )
        return path

    def attachment_path(self, sha: str, mime: str) -> Path:
        return self.attachments_dir / sha[:2] / f"{sha}.{_MIME_EXT[mime]}"

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        attachments: Sequence[tuple[bytes, str]] = (),
    ) -> Message:
        """Append a message; ``attachments`` are (bytes, mime) pairs stored content-addressed."""
        paths = [self.add_attachment(payload, mime) for payload, mime in attachments]
        now = time.time()
        with self.db.conn:
            cur = self.db.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at)"
                " VALUES (?, ?, ?, ?)",
                [conversation_id, role, content, now],
            )
            message_id = int(cur.lastrowid or 0)
            for position, path in enumerate(paths):
                self.db.execute(
                    "INSERT INTO message_attachments (message_id, position, sha256)"
                    " VALUES (?, ?, ?)",
                    [message_id, position, path.stem],
                )
            self.db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", [now, conversation_id]
            )
        return self.message(message_id)

    def update_message(
        self, message_id: int, content: str, stats: dict[str, object] | None = None
    ) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE messages SET content = ?, stats = ? WHERE id = ?",
                [content, None if stats is None else json.dumps(stats), message_id],
            )

    def _messages(self, where: str, args: list[object]) -> list[Message]:
        rows = list(self.db.query(f"SELECT * FROM messages WHERE {where} ORDER BY id", args))
        files: dict[int, list[Path]] = {}
        ids = [r["id"] for r in rows]
        if ids:
            marks = ",".join("?" * len(ids))
            for a in self.db.query(
                "SELECT ma.message_id, a.sha256, a.mime FROM message_attachments ma"
                f" JOIN attachments a USING (sha256) WHERE ma.message_id IN ({marks})"
                " ORDER BY ma.message_id, ma.position",
                ids,
            ):
                files.setdefault(a["message_id"], []).append(
                    self.attachment_path(a["sha256"], a["mime"])
                )
        return [
            Message(
                id=r["id"],
                conversation_id=r["conversation_id"],
                role=r["role"],
                content=r["content"],
                created_at=r["created_at"],
                attachments=tuple(files.get(r["id"], ())),
                stats=None if r["stats"] is None else json.loads(r["stats"]),
            )
            for r in rows
        ]

    def message(self, message_id: int) -> Message:
        found = self._messages("id = ?", [message_id])
        if not found:
            raise HistoryError(f"no message {message_id}")
        return found[0]

    def messages(self, conversation_id: int) -> list[Message]:
        return self._messages("conversation_id = ?", [conversation_id])

    def delete_message(self, message_id: int) -> None:
        """Delete one message (a reply that failed, an event whose job failed)."""
        message = self.message(message_id)
        stale = [
            s.path for s in self.snapshots(message.conversation_id) if s.message_id == message_id
        ]
        with self.db.conn:
            self.db.execute("DELETE FROM messages WHERE id = ?", [message_id])
        for path in stale:
            path.unlink(missing_ok=True)
        self._collect_attachments()

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete ``message_id`` and every later message of the conversation (edit, regenerate)."""
        stale = [
            s.path
            for s in self.snapshots(conversation_id)
            if s.message_id is not None and s.message_id >= message_id
        ]
        with self.db.conn:
            self.db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                [conversation_id, message_id],
            )
        for path in stale:
            path.unlink(missing_ok=True)
        self._collect_attachments()

    def _collect_attachments(self) -> None:
        rows = list(
            self.db.query(
                "SELECT sha256, mime FROM attachments WHERE sha256 NOT IN"
                " (SELECT sha256 FROM message_attachments)"
            )
        )
        with self.db.conn:
            for r in rows:
                self.db.execute("DELETE FROM attachments WHERE sha256 = ?", [r["sha256"]])
        for r in rows:
            self.attachment_path(r["sha256"], r["mime"]).unlink(missing_ok=True)

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        return search_messages(self.db_path, text, limit)

    # snapshots

    def snapshots(self, conversation_id: int) -> list[SnapshotRecord]:
        rows = self.db.query(
            "SELECT * FROM snapshots WHERE conversation_id = ? ORDER BY id", [conversation_id]
        )
        return [
            SnapshotRecord(
                id=r["id"],
                conversation_id=r["conversation_id"],
                message_id=r["message_id"],
                path=self.snapshots_dir / r["file"],
                tokens_seen=r["tokens_seen"],
                nbytes=r["nbytes"],
                model=r["model"],
            )
            for r in rows
        ]

    def _remove_unrecorded_snapshots(self) -> None:
        # files a crash left between writing and recording, and temporary files of a failed write
        recorded = {r["file"] for r in self.db.query("SELECT file FROM snapshots")}
        for path in self.snapshots_dir.iterdir():
            if path.is_file() and path.name not in recorded:
                log.info("removing unrecorded snapshot file %s", path)
                path.unlink(missing_ok=True)

    def drop_snapshots(self, conversation_id: int) -> None:
        for old in self.snapshots(conversation_id):
            with self.db.conn:
                self.db.execute("DELETE FROM snapshots WHERE id = ?", [old.id])
            old.path.unlink(missing_ok=True)

    def record_snapshot(self, info: SnapshotInfo) -> SnapshotRecord:
        """Record a state file already written in ``snapshots_dir``; drop the oldest ones."""
        if info.path.parent != self.snapshots_dir:
            raise HistoryError(f"snapshot {info.path} is outside {self.snapshots_dir}")
        with self.db.conn:
            self.db.execute(
                "INSERT INTO snapshots (conversation_id, message_id, file, tokens_seen, nbytes,"
                " model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    info.conversation_id,
                    info.message_id,
                    info.path.name,
                    info.tokens_seen,
                    info.nbytes,
                    info.model,
                    time.time(),
                ],
            )
        kept = self.snapshots(info.conversation_id)
        for old in kept[:-KEEP_SNAPSHOTS]:
            with self.db.conn:
                self.db.execute("DELETE FROM snapshots WHERE id = ?", [old.id])
            old.path.unlink(missing_ok=True)
        return kept[-1]

    def session_target(
        self, conversation_id: int, upto_message_id: int | None = None, *, latest: bool = True
    ) -> SessionTarget:
        """Where the state of a conversation just after ``upto_message_id`` comes from.

        ``latest``: up to the conversation's last message (``upto_message_id`` is ignored).
        The newest snapshot at or before that message whose file exists is the starting point.
        """
        conversation = self.conversation(conversation_id)
        messages = self.messages(conversation_id)
        if latest:
            upto_message_id = messages[-1].id if messages else None
        kept = [m for m in messages if upto_message_id is not None and m.id <= upto_message_id]
        history = tuple(Turn(m.id, m.role, m.content, m.attachments) for m in kept)
        ids = {m.id for m in kept}
        best: SnapshotRecord | None = None
        for s in self.snapshots(conversation_id):
            usable = (s.message_id is None or s.message_id in ids) and s.path.exists()
            if usable and (best is None or (s.message_id or 0) >= (best.message_id or 0)):
                best = s
        return SessionTarget(
            conversation_id=conversation_id,
            upto_message_id=upto_message_id,
            system_prompt=conversation.system_prompt,
            snapshot=None if best is None else best.path,
            snapshot_message_id=None if best is None else best.message_id,
            history=history,
        )
