"""A full disk while saving: a clear message, the previous state kept, nothing lost.

On a real filesystem that fills up (a 2 MiB tmpfs, mounted when the tests run as root with
CAP_SYS_ADMIN; skipped otherwise), and in the app with the state writer failing with ENOSPC
half-way through its file (always runs).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.history.files import write_atomically
from app.history.models import SnapshotInfo
from app.history.store import HistoryStore

WAIT_MS = 20_000


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _save(
    store: HistoryStore, engine: Any, session: Any, conversation_id: int, message_id: int
) -> SnapshotInfo:
    path = store.snapshots_dir / f"c{conversation_id}-full-disk-{session.tokens_seen}.state"
    write_atomically(path, lambda tmp: session.save(tmp))
    info = SnapshotInfo(
        conversation_id, message_id, path, session.tokens_seen, session.state_nbytes, "tiny"
    )
    store.record_snapshot(info)
    return info


def test_full_tmpfs_keeps_previous_state_and_history(tiny_disk: Path, tiny_engine: Any) -> None:
    # GIVEN a conversation with a saved state on a small disk
    store = HistoryStore(tiny_disk / "data")
    conversation_id = store.create_conversation().id
    session = tiny_engine.new_session()
    session.add_user_message("what is on the screen?")
    list(session.generate(_params()))
    first = store.add_message(conversation_id, "user", "what is on the screen?")
    saved = _save(store, tiny_engine, session, conversation_id, first.id)
    before = saved.path.read_bytes()
    # WHEN the disk fills up and the next state is saved
    filler = _fill(tiny_disk)
    session.add_user_message("and now?")
    list(session.generate(_params()))
    # (safetensors reports ENOSPC as its own SafetensorError, with the OS message)
    with pytest.raises(Exception, match="No space left on device"):  # noqa: PT011
        _save(store, tiny_engine, session, conversation_id, first.id)
    # THEN the error says so, the previous state is whole and still the one recorded,
    # and no temporary file is left taking space
    assert saved.path.read_bytes() == before
    assert [s.path for s in store.snapshots(conversation_id)] == [saved.path]
    assert [p.name for p in store.snapshots_dir.iterdir()] == [saved.path.name]
    tiny_engine.restore_session(saved.path)
    # WHEN a message is stored on the full disk: SQLite refuses it whole, the history stays
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.add_message(conversation_id, "user", "x" * 2_000_000)
    assert [m.content for m in store.messages(conversation_id)] == ["what is on the screen?"]
    store.close()
    # THEN, with space again, the history reopens intact and saving works
    filler.unlink()
    store = HistoryStore(tiny_disk / "data")
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    assert [m.content for m in store.messages(conversation_id)] == ["what is on the screen?"]
    _save(store, tiny_engine, session, conversation_id, first.id)
    store.close()


def _params() -> Any:
    from engine.sampling import SamplingParams

    return SamplingParams(max_new_tokens=6)


@pytest.mark.gui
def test_app_state_save_on_full_disk_says_so_and_keeps_previous(
    qtbot: Any, make_window: Any, tiny_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.state

    window = make_window(tiny_factory)
    qtbot.waitUntil(lambda: window.engine_client.model_info is not None, timeout=WAIT_MS)
    conversation_id = window.current_conversation_id
    window.store.set_options(conversation_id, "", {"max_new_tokens": 6})
    # GIVEN a first reply whose state was saved
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        window.composer.input.setPlainText("first question")
        window.composer.submit()
    (saved,) = window.store.snapshots(conversation_id)
    before = saved.path.read_bytes()
    real_save_file = engine.state.save_file

    def full_disk(tensors: dict[str, Any], filename: str, metadata: dict[str, str]) -> None:
        # half the file reaches the disk, then the device is full
        real_save_file(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        os.truncate(filename, size // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(engine.state, "save_file", full_disk)
    # WHEN the disk is full at the next save
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        window.composer.input.setPlainText("second question")
        window.composer.submit()
    # THEN the reply is kept, the window says why the state was not saved, the previous
    # state file is whole and still recorded, and no partial file is left
    qtbot.waitUntil(
        lambda: "No space left on device" in window.status.currentMessage(), timeout=WAIT_MS
    )
    assert "Could not save the conversation's state" in window.status.currentMessage()
    messages = window.store.messages(conversation_id)
    assert [m.content for m in messages][::2] == ["first question", "second question"]
    assert messages[-1].content == finished.args[1].text
    assert [s.path for s in window.store.snapshots(conversation_id)] == [saved.path]
    assert saved.path.read_bytes() == before
    assert sorted(p.name for p in window.store.snapshots_dir.iterdir()) == [saved.path.name]
    # WHEN space is back: the next save point writes the state again
    monkeypatch.setattr(engine.state, "save_file", real_save_file)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        window.composer.input.setPlainText("third question")
        window.composer.submit()
    assert len(window.store.snapshots(conversation_id)) == 2
