"""kill -9 of the real app (``tests/faults/app_driver.py``: the window ``infinitevl app``
builds, driven through its composer and reader pane) at random moments of replies, state saves
and document reads; after each kill the app starts again on the same data directory.

Just before each kill the test reads the history database as any other reader would (SQLite,
WAL): every message committed by then must be there after the kill, with the same text or
(a reply still streaming in) a longer one. After each kill: ``PRAGMA integrity_check`` is ok;
every recorded snapshot has its file and restores; no unrecorded state file survives the next
start; and the next start reaches "model loaded" and goes on chatting. The worker-based test
(test_kill9.py) aims its kills at each phase, the state save included; this one runs the app
itself.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.faults.checks import check_store_whole

ROOT = Path(__file__).resolve().parents[2]
TRIALS = int(os.environ.get("INFINITEVL_APP_KILL_TRIALS", "50"))
START_TIMEOUT = 120.0


class _Lines:
    """The driver's stdout lines, read on a thread, with the time each arrived."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, proc: subprocess.Popen[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return True
            if proc.poll() is not None:
                time.sleep(0.2)  # let the reader thread take the last lines
                return any(line.startswith(prefix) for line in self.lines)
            time.sleep(0.01)
        return False

    def last_step(self) -> str:
        steps = [line.split()[0] for line in self.lines if line.split()]
        return steps[-1] if steps else "starting"


def _messages(db: Path) -> dict[int, tuple[str, str]]:
    """id -> (role, content) of every committed message, read as any other reader would."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT id, role, content FROM messages").fetchall()
    finally:
        conn.close()
    return {message_id: (role, content) for message_id, role, content in rows}


def _check_after_kill(data_dir: Path, before: dict[int, tuple[str, str]], engine: Any) -> int:
    stored = check_store_whole(data_dir, engine)
    for message_id, (role, text) in before.items():
        assert message_id in stored, f"{role} message {message_id} ({text[:40]!r}) lost"
        if role != "event":  # an event line is reworded when its read ends
            # the same text, or a longer one: a reply still streaming in at the kill
            assert stored[message_id].startswith(text), (message_id, text, stored[message_id])
    return len(stored)


def _pages(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        page = rng.integers(0, 256, (420, 300, 3), dtype=np.uint8)
        Image.fromarray(page).save(folder / f"page{i}.png")
    return folder


@pytest.mark.slow
@pytest.mark.gui
def test_kill9_of_the_real_app_loses_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.engine import Engine

    engine = Engine.load(tiny_checkpoint, device="cpu")
    data_dir, pages = tmp_path / "data", _pages(tmp_path / "pages")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONFAULTHANDLER": "1"}
    rng = random.Random(11)
    killed: Counter[str] = Counter()
    messages = 0
    for trial in range(TRIALS):
        argv = [str(data_dir), str(tiny_checkpoint), str(pages), str(trial)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.app_driver", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = _Lines(proc)
        try:
            # GIVEN the app, restarted after the last kill, chatting and reading
            started = lines.wait_for("ready", proc, START_TIMEOUT)
            assert started, f"trial {trial}: the app did not start:\n" + "\n".join(lines.lines)
            time.sleep(rng.uniform(0.05, 1.5))
            before = _messages(data_dir / "history.sqlite3")
            # WHEN it is killed with SIGKILL
            killed[lines.last_step()] += 1
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, "\n".join(lines.lines)
        failures = [line for line in lines.lines if line.startswith("failed")]
        assert not failures, f"trial {trial}: {failures}"
        # THEN everything committed before the kill is there, whole
        messages = _check_after_kill(data_dir, before, engine)
    print(f"\n{TRIALS} kills of the app, by its last step: {dict(killed)}; {messages} messages")
    assert messages > TRIALS  # the trials really chatted
    assert all(killed[step] > 0 for step in ("reply", "document")), killed
