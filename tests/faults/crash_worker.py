"""A process that chats like the app, for kill -9 trials: real store, real engine, tiny model.

It repeats the app's save points in the app's order (app/chat/controller.py and
app/engine_client.py): a reply (user message, empty assistant row, generation, state written
atomically, reply text stored, snapshot recorded) and a document read (event row, pages fed,
state written, event reworded, snapshot recorded). Before and after every store write it appends
to a journal what it is about to commit and what was committed, so the checker knows which
messages must survive. ``phase`` (a shared int) says what it is doing, for the killer.
On start it resumes the newest conversation from its newest snapshot, as the app does.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ("starting", "reply", "save", "document")


class Journal:
    """Append-only lines, fsynced: what the worker intends to commit and what it committed."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the worker)

    def write(self, kind: str, **fields: object) -> None:
        self._f.write(json.dumps({"kind": kind, **fields}) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())


def _set(phase: Synchronized | None, name: str) -> None:
    if phase is not None:
        phase.value = PHASES.index(name)


def _commit_message(
    store: Any, journal: Journal, conversation_id: int, role: str, text: str
) -> int:
    journal.write("intent", conversation_id=conversation_id, content=text)
    message = store.add_message(conversation_id, role, text)
    journal.write("committed", id=message.id, content=text)
    return int(message.id)


def _update_message(store: Any, journal: Journal, message_id: int, text: str) -> None:
    journal.write("intent", id=message_id, content=text)
    store.update_message(message_id, text)
    journal.write("committed", id=message_id, content=text)


def _write_state(
    store: Any, engine: Any, session: Any, conversation_id: int, message_id: int
) -> Any:
    from app.history.files import write_atomically
    from app.history.models import SnapshotInfo

    path = store.snapshots_dir / f"c{conversation_id}-{uuid.uuid4().hex}.state"
    write_atomically(path, lambda tmp: session.save(tmp))
    return SnapshotInfo(
        conversation_id=conversation_id,
        message_id=message_id,
        path=path,
        tokens_seen=session.tokens_seen,
        nbytes=session.state_nbytes,
        model=str(engine.info.name),
    )


def _resume(store: Any, engine: Any) -> tuple[int, Any]:
    conversations = store.conversations()
    if not conversations:
        return store.create_conversation("kill -9 trial").id, engine.new_session()
    target = store.session_target(conversations[0].id)
    if target.snapshot is None:
        return target.conversation_id, engine.new_session()
    # a recorded snapshot must load: a StateError here fails the trial (exit code 3)
    return target.conversation_id, engine.restore_session(target.snapshot)


def run(
    data_dir: str, checkpoint: str, journal_path: str, seed: int, phase: Synchronized | None = None
) -> None:
    """Chat forever (until killed) in ``data_dir``; see the module docstring."""
    import torch

    from app.history.store import HistoryStore
    from engine.engine import Engine
    from engine.sampling import SamplingParams

    torch.set_num_threads(1)
    rng = random.Random(seed)
    journal = Journal(Path(journal_path))
    store = HistoryStore(Path(data_dir))
    engine = Engine.load(checkpoint, device="cpu")
    try:
        conversation_id, session = _resume(store, engine)
    except Exception as exc:  # the trial's verdict: the parent reads the exit code
        journal.write("resume_failed", error=repr(exc))
        os._exit(3)
    journal.write("started", seed=seed)
    for turn in range(10_000):
        if turn % 6 == 5 or session.tokens_seen > 3000:
            conversation_id, session = (
                store.create_conversation("kill -9 trial").id,
                engine.new_session(),
            )
        _set(phase, "reply")
        words = " ".join(
            rng.choice(("screen", "page", "text", "cat", "table", "window")) for _ in range(8)
        )
        _commit_message(store, journal, conversation_id, "user", f"turn {turn}: {words}")
        reply_id = _commit_message(store, journal, conversation_id, "assistant", "")
        session.add_user_message(f"turn {turn}: {words}")
        params = SamplingParams(
            max_new_tokens=rng.randint(4, 24), temperature=0.8, seed=seed + turn
        )
        text = "".join(d.text for d in session.generate(params)) or "(empty)"
        # the app's order: the worker writes the state, then the GUI stores the reply text and
        # records the snapshot (engine_client._try_save, controller._on_generation_finished)
        _set(phase, "save")
        snapshot = _write_state(store, engine, session, conversation_id, reply_id)
        _update_message(store, journal, reply_id, text)
        store.record_snapshot(snapshot)
        if turn % 2 == 1:
            _set(phase, "document")
            event_id = _commit_message(store, journal, conversation_id, "event", "Reading pages…")
            pages = [
                np.full((56, 84, 3), rng.randrange(256), np.uint8) for _ in range(rng.randint(1, 3))
            ]
            session.feed_document(pages)
            _set(phase, "save")
            snapshot = _write_state(store, engine, session, conversation_id, event_id)
            _update_message(store, journal, event_id, f"Read {len(pages)} pages")
            store.record_snapshot(snapshot)
