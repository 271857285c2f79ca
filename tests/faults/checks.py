"""What a restart after kill -9 must find in the data directory, whoever was killed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def check_store_whole(data_dir: Path, engine: Any) -> dict[int, str]:
    """The database passes ``PRAGMA integrity_check``; every recorded snapshot has its file, whole,
    and restores to the tokens its row records; a state file written but not yet recorded is
    complete too; reopening the store (as the app does at start) leaves no unrecorded file.

    Returns:
        The stored messages, id -> content.
    """
    from app.history.store import HistoryStore

    conn = sqlite3.connect(data_dir / "history.sqlite3")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = dict(conn.execute("SELECT id, content FROM messages").fetchall())
        rows = conn.execute("SELECT file, tokens_seen FROM snapshots").fetchall()
    finally:
        conn.close()
    recorded = {name for name, _ in rows}
    snapshots = data_dir / "snapshots"
    for name, tokens_seen in rows:
        # StateError here (a missing or damaged file) is a failure
        assert engine.restore_session(snapshots / name).tokens_seen == tokens_seen, name
    for path in snapshots.iterdir():
        if path.name not in recorded and not path.name.startswith("."):
            engine.restore_session(path)  # written but not yet recorded: still complete
    store = HistoryStore(data_dir)
    try:
        leftovers = {p.name for p in snapshots.iterdir()} - recorded
        assert not leftovers, f"unrecorded files survive a restart: {leftovers}"
    finally:
        store.close()
    return stored
