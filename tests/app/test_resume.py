"""Quit, restart, resume: a conversation continues from its saved state without re-reading its
history (real engine, tiny checkpoint), and falls back to the history when the state is unusable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.engine_client import ChatResult
from tests.app.flows import ask, loaded, opened_status

pytestmark = pytest.mark.gui

WAIT_MS = 20_000
LONG_FIRST_TURN = " ".join(f"fact{i} is about the river delta and its birds" for i in range(12))


def _first_session(qtbot: Any, make_window: Any, factory: Any) -> tuple[int, ChatResult]:
    window = loaded(qtbot, make_window(factory))
    window.store.set_options(window.current_conversation_id, "", {"max_new_tokens": 4})
    window.attach_image(np.full((30, 40, 3), 90, np.uint8))
    first = ask(qtbot, window, LONG_FIRST_TURN)
    conversation_id = window.current_conversation_id
    window.close()
    return conversation_id, first


def test_resume_after_restart_feeds_only_the_new_turn(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    # GIVEN a conversation with a long first turn, answered, saved, and the app quit
    conversation_id, first = _first_session(qtbot, make_window, tiny_factory)
    assert first.status.tokens_fed_total > 100

    # WHEN the app starts again on the same data directory
    window = make_window(tiny_factory)
    opened = opened_status(qtbot, window)
    # THEN the conversation reopens from its snapshot, with its messages shown
    assert window.current_conversation_id == conversation_id
    assert opened.how == "snapshot"
    assert opened.tokens_seen == first.status.tokens_seen
    assert opened.tokens_fed_total == 0
    assert "without re-reading" in window.status.currentMessage()
    assert [w.text for w in window.transcript.message_widgets()][0] == LONG_FIRST_TURN

    # WHEN the user asks a follow-up
    second = ask(qtbot, window, "and then?")
    # THEN only the new turn was fed: the first turn was not read again
    assert second.stats.prompt_tokens < 30
    assert second.status.tokens_fed_total <= second.stats.prompt_tokens + 4
    assert second.status.tokens_seen > first.status.tokens_seen + second.stats.prompt_tokens


def test_resume_without_usable_snapshot_rereads_history_and_says_so(
    qtbot: Any, make_window: Any, tiny_factory: Any, data_dir: Path
) -> None:
    # GIVEN a saved conversation whose snapshot file got damaged
    conversation_id, first = _first_session(qtbot, make_window, tiny_factory)
    for path in (data_dir / "snapshots").glob("*.state"):
        path.write_bytes(b"damaged")

    # WHEN the app restarts and the conversation is opened
    window = make_window(tiny_factory)
    opened = opened_status(qtbot, window)
    # THEN the state is rebuilt from the stored messages, and the user is told
    assert window.current_conversation_id == conversation_id
    assert opened.how == "history"
    # the whole first turn, its image included, was fed again
    assert opened.tokens_fed_total >= first.stats.prompt_tokens
    assert "re-read" in window.status.currentMessage()
    # and the conversation goes on
    second = ask(qtbot, window, "still there?")
    assert second.status.tokens_seen > first.status.tokens_seen
