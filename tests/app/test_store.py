"""The history store: migrations, WAL, FTS search, permissions, attachments, snapshots."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from app.history import store as store_module
from app.history.files import write_atomically
from app.history.models import SnapshotInfo
from app.history.store import HistoryError, HistoryStore

PNG_A = b"\x89PNG\r\n\x1a\n" + b"a" * 64
PNG_B = b"\x89PNG\r\n\x1a\n" + b"b" * 64


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(store: HistoryStore, conversation_id: int, message_id: int | None, body: bytes):
    path = store.snapshots_dir / f"c{conversation_id}-{message_id}-{len(body)}.state"
    write_atomically(path, lambda tmp: tmp.write_bytes(body))
    info = SnapshotInfo(conversation_id, message_id, path, len(body), len(body), "tiny")
    return store.record_snapshot(info)


def test_store_fresh_database_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "data")
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store_module.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conversations() == []


def test_store_migration_step_runs_once_and_keeps_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a version-1 database with a conversation
    store = HistoryStore(tmp_path)
    conversation = store.create_conversation("kept")
    store.add_message(conversation.id, "user", "hello there")
    store.close()
    # WHEN the app learns a step 2 and opens the database twice
    step2 = "ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, step2])
    store = HistoryStore(tmp_path)
    store.close()
    store = HistoryStore(tmp_path)
    # THEN the step ran once (a second ALTER would have failed) and nothing was lost
    assert store.version == 2
    assert [c.title for c in store.conversations()] == ["kept"]
    assert store.search("hello")[0].conversation_id == conversation.id
    row = store.db.execute("SELECT pinned FROM conversations").fetchone()
    assert row == (0,)


def test_store_failed_migration_leaves_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    HistoryStore(tmp_path).close()
    bad = "ALTER TABLE conversations ADD COLUMN x INTEGER; ALTER TABLE nowhere ADD COLUMN y;"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, bad])
    with pytest.raises(HistoryError, match="version 2"):
        HistoryStore(tmp_path)
    conn = sqlite3.connect(tmp_path / store_module.DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = [r[1] for r in conn.execute("PRAGMA table_info(conversations)")]
    assert "x" not in columns


def test_store_newer_database_is_refused_with_a_message(tmp_path: Path) -> None:
    HistoryStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / store_module.DB_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HistoryError, match="newer than this app"):
        HistoryStore(tmp_path)


def test_store_corrupt_database_is_a_history_error(tmp_path: Path) -> None:
    (tmp_path / store_module.DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match="cannot open"):
        HistoryStore(tmp_path)


def test_store_files_are_readable_by_the_user_alone(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "data")
    c = store.create_conversation()
    message = store.add_message(c.id, "user", "look", [(PNG_A, "image/png")])
    _snapshot(store, c.id, message.id, b"state")
    assert _mode(store.data_dir) == 0o700
    assert _mode(store.attachments_dir) == 0o700
    assert _mode(store.snapshots_dir) == 0o700
    files = [p for p in store.data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files)
    assert {p.suffix for p in files} >= {".sqlite3", ".png", ".state"}
    assert {oct(_mode(p)) for p in files} == {oct(0o600)}


def test_store_search_finds_words_in_every_conversation(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    store.add_message(a.id, "user", "The quick brown fox")
    store.add_message(b.id, "assistant", "A fox jumps over the dog")
    edited = store.add_message(b.id, "user", "nothing here")
    store.update_message(edited.id, "now a foxglove")

    hits = store.search("fox")
    assert {h.conversation_id for h in hits} == {a.id, b.id}
    assert any("[fox" in h.snippet for h in hits)
    assert len(hits) == 3  # prefix match on the last word finds "foxglove"
    assert [h.conversation_id for h in store.search("brown fox")] == [a.id]
    assert store.search('"unbalanced ( AND') == []
    assert store.search("   ") == []
    store.delete_conversation(a.id)
    assert {h.conversation_id for h in store.search("fox")} == {b.id}


def test_store_attachments_are_stored_once(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    c = store.create_conversation()
    m1 = store.add_message(c.id, "user", "one", [(PNG_A, "image/png")])
    m2 = store.add_message(c.id, "user", "two", [(PNG_A, "image/png"), (PNG_B, "image/png")])
    assert m1.attachments[0] == m2.attachments[0]
    assert m2.attachments[1] != m2.attachments[0]
    assert m1.attachments[0].read_bytes() == PNG_A
    assert len([p for p in store.attachments_dir.rglob("*") if p.is_file()]) == 2
    # deleting the last message that uses an attachment deletes its file
    store.delete_messages_from(c.id, m2.id)
    assert not m2.attachments[1].exists()
    assert m1.attachments[0].exists()
    with pytest.raises(HistoryError, match="unsupported"):
        store.add_attachment(b"x", "application/x-sh")


def test_store_snapshot_write_failure_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    # GIVEN a recorded snapshot
    store = HistoryStore(tmp_path)
    c = store.create_conversation()
    m = store.add_message(c.id, "user", "hi")
    first = _snapshot(store, c.id, m.id, b"good state")

    # WHEN writing its replacement fails half-way
    def broken_write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(first.path, broken_write)

    # THEN the previous file is intact, still recorded, and no temporary file is left
    assert first.path.read_bytes() == b"good state"
    assert store.session_target(c.id).snapshot == first.path
    assert sorted(p.name for p in store.snapshots_dir.iterdir()) == [first.path.name]


def test_store_session_target_uses_newest_usable_snapshot(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    c = store.create_conversation(system_prompt="be brief")
    u1 = store.add_message(c.id, "user", "q1")
    a1 = store.add_message(c.id, "assistant", "r1")
    snap1 = _snapshot(store, c.id, a1.id, b"s1")
    u2 = store.add_message(c.id, "user", "q2")
    a2 = store.add_message(c.id, "assistant", "r2")

    latest = store.session_target(c.id)
    assert latest.upto_message_id == a2.id
    assert latest.snapshot == snap1.path
    assert [t.text for t in latest.turns_after_snapshot()] == ["q2", "r2"]
    assert latest.system_prompt == "be brief"

    before_u2 = store.session_target(c.id, a1.id, latest=False)
    assert before_u2.turns_after_snapshot() == ()

    # a missing snapshot file means the whole history is fed again
    snap1.path.unlink()
    rebuilt = store.session_target(c.id)
    assert rebuilt.snapshot is None
    assert [t.message_id for t in rebuilt.turns_after_snapshot()] == [u1.id, a1.id, u2.id, a2.id]


def test_store_keeps_the_newest_snapshots_only(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    c = store.create_conversation()
    records = []
    for i in range(store_module.KEEP_SNAPSHOTS + 2):
        m = store.add_message(c.id, "assistant", f"reply {i}")
        records.append(_snapshot(store, c.id, m.id, b"s" * (i + 1)))
    kept = store.snapshots(c.id)
    assert [s.id for s in kept] == [r.id for r in records[-store_module.KEEP_SNAPSHOTS :]]
    assert not records[0].path.exists()
    # a new system prompt makes every saved state stale
    store.set_options(c.id, "new prompt", {"temperature": 0.5})
    assert store.snapshots(c.id) == []
    assert store.conversation(c.id).sampling == {"temperature": 0.5}


def test_store_rename_and_delete(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    c = store.create_conversation()
    m = store.add_message(c.id, "user", "hi")
    snap = _snapshot(store, c.id, m.id, b"s")
    store.rename(c.id, "  Trip plans ")
    assert store.conversation(c.id).title == "Trip plans"
    with pytest.raises(HistoryError, match="empty"):
        store.rename(c.id, "   ")
    store.delete_conversation(c.id)
    assert store.conversations() == []
    assert not snap.path.exists()
    # ids are never reused: a stale reference cannot reach a newer conversation or message
    again = store.create_conversation()
    assert again.id > c.id
    assert store.add_message(again.id, "user", "x").id > m.id


def test_store_removes_unrecorded_snapshot_files_on_open(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path)
    c = store.create_conversation()
    kept = _snapshot(store, c.id, None, b"recorded")
    (store.snapshots_dir / "c1-crashed.state").write_bytes(b"never recorded")
    (store.snapshots_dir / ".c1-x.state.abc.tmp").write_bytes(b"half written")
    store.close()
    store = HistoryStore(tmp_path)
    assert [p.name for p in store.snapshots_dir.iterdir()] == [kept.path.name]


def test_store_unusable_data_directory_is_a_history_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(HistoryError, match="cannot use the data directory"):
        HistoryStore(blocker / "data")
