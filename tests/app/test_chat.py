"""The chat window driven like a user: the real engine on the tiny checkpoint for every flow,
the scripted FakeEngine only for timing edge cases (slow tokens, failures, shutdown races).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from PySide6 import QtCore, QtGui, QtWidgets

from app.chat.window import MainWindow
from app.engine_client import ChatResult
from engine import EngineError
from tests.app.fakes import FakeEngine, FakeScript
from tests.app.flows import loaded, placeholder_shown, type_and_send

pytestmark = pytest.mark.gui

WAIT_MS = 20_000


def _drop(widget: QtWidgets.QWidget, mime: QtCore.QMimeData) -> None:
    pos = QtCore.QPointF(widget.rect().center())
    actions = QtCore.Qt.DropAction.CopyAction
    buttons, mods = QtCore.Qt.MouseButton.LeftButton, QtCore.Qt.KeyboardModifier.NoModifier
    # Qt's drag-enter event takes a QPoint, its drop event a QPointF
    enter = QtGui.QDragEnterEvent(pos.toPoint(), actions, mime, buttons, mods)
    QtWidgets.QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    QtWidgets.QApplication.sendEvent(widget, QtGui.QDropEvent(pos, actions, mime, buttons, mods))


def _set_sampling(window: MainWindow, **sampling: object) -> None:
    conversation_id = window.current_conversation_id
    assert conversation_id is not None
    window.store.set_options(conversation_id, "", dict(sampling))


def test_chat_message_with_dropped_image_streams_reply(
    qtbot: Any, make_window: Any, tiny_factory: Any, tmp_path: Path
) -> None:
    # GIVEN the app with the tiny model loaded and an image file on disk
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=24)
    picture = tmp_path / "dropped.png"
    Image.fromarray(np.full((40, 56, 3), 200, np.uint8)).save(picture)

    # WHEN the user drops the file on the composer, types a question and presses Enter
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(picture))])
    _drop(window.composer, mime)
    qtbot.waitUntil(lambda: window.composer.thumbnail_count() == 1, timeout=WAIT_MS)
    streamed: list[str] = []
    window.engine_client.token_streamed.connect(lambda _id, text: streamed.append(text))
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        type_and_send(qtbot, window, "What is in this picture?")
        assert window.composer.stop_button.isVisibleTo(window)

    # THEN the reply streamed in pieces, is shown and stored, and the state was saved
    message_id, result = finished.args
    assert isinstance(result, ChatResult)
    assert result.stats.generated_tokens > 0
    assert "".join(streamed) == result.text
    messages = window.store.messages(window.current_conversation_id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].content == "What is in this picture?"
    assert len(messages[0].attachments) == 1
    assert np.asarray(Image.open(messages[0].attachments[0])).shape == (40, 56, 3)
    assert messages[1].id == message_id and messages[1].content == result.text
    assert window.transcript.widget_for(message_id).text == result.text
    snapshot = window.store.snapshots(window.current_conversation_id)[-1]
    assert snapshot.message_id == message_id and snapshot.path.exists()
    assert window.composer.thumbnail_count() == 0
    assert window.composer.send_button.isVisibleTo(window)
    assert "tokens seen" in window.status.tokens.text()
    assert "tiny" in window.status.model.text() or window.status.model.text() != "No model"


def test_chat_pasted_image_becomes_thumbnail(qtbot: Any, make_window: Any, tiny_factory: Any):
    window = make_window(tiny_factory)
    mime = QtCore.QMimeData()
    image = QtGui.QImage(30, 20, QtGui.QImage.Format.Format_RGB32)
    image.fill(QtGui.QColor("red"))
    mime.setImageData(image)
    window.composer.input.insertFromMimeData(mime)
    assert window.composer.thumbnail_count() == 1
    assert window.composer.images[0].shape == (20, 30, 3)
    assert tuple(window.composer.images[0][0, 0]) == (255, 0, 0)


def test_chat_unreadable_dropped_file_is_a_message(
    qtbot: Any, make_window: Any, tiny_factory: Any, tmp_path: Path
) -> None:
    window = make_window(tiny_factory)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(bad))])
    with qtbot.waitSignal(window.composer.image_failed, timeout=WAIT_MS) as failed:
        _drop(window.composer, mime)
    assert "broken.png" in failed.args[0]
    assert window.composer.thumbnail_count() == 0
    # a good file dropped anywhere on the window is attached
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(good)
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(good))])
    _drop(window, mime)
    qtbot.waitUntil(lambda: window.composer.thumbnail_count() == 1, timeout=WAIT_MS)


def test_chat_stop_mid_reply_keeps_partial_reply(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    # GIVEN a long reply streaming from the real engine
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=100_000)
    with qtbot.waitSignal(window.engine_client.token_streamed, timeout=WAIT_MS):
        type_and_send(qtbot, window, "Tell me a very long story")
    # WHEN the user presses Esc
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        qtbot.keyClick(window, QtCore.Qt.Key.Key_Escape)
    # THEN the reply ends as cancelled, its text is kept, and the app is ready again
    _, result = finished.args
    assert result.stats.stop_reason == "cancelled"
    assert 0 < result.stats.generated_tokens < 100_000
    stored = window.store.messages(window.current_conversation_id)[-1]
    assert stored.content == result.text and stored.stats["stop_reason"] == "cancelled"
    assert window.controller.reply is None
    assert window.composer.send_button.isVisibleTo(window)


def test_chat_history_search_opens_the_conversation(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    # GIVEN two conversations, one mentioning "pelican"
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=4)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        type_and_send(qtbot, window, "Where do pelicans nest?")
    pelican_id = window.current_conversation_id
    window.controller.new_conversation()
    _set_sampling(window, max_new_tokens=4)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        type_and_send(qtbot, window, "Tell me about owls")
    assert window.current_conversation_id != pelican_id
    # WHEN the user searches (Ctrl+F) for a prefix of the word
    qtbot.keyClick(window, QtCore.Qt.Key.Key_F, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert window.conversations.search_box.hasFocus()
    qtbot.keyClicks(window.conversations.search_box, "pelic")
    qtbot.waitUntil(lambda: window.conversations.is_searching, timeout=WAIT_MS)
    hits = window.conversations.list
    assert hits.count() == 1 and "[pelicans]" in hits.item(0).text()
    # THEN choosing the hit opens that conversation at the message
    revealed: list[int] = []
    window.conversations.message_selected.connect(revealed.append)
    hits.setCurrentRow(0)
    assert revealed == [window.store.messages(pelican_id)[0].id]
    assert window.current_conversation_id == pelican_id
    texts = [w.text for w in window.transcript.message_widgets()]
    assert texts[0] == "Where do pelicans nest?"


def test_chat_rename_delete_and_export(
    qtbot: Any, make_window: Any, tiny_factory: Any, tmp_path: Path
) -> None:
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=4)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        type_and_send(qtbot, window, "Write `code`")
    conversation_id = window.current_conversation_id
    assert window.store.conversation(conversation_id).title == "Write `code`"
    # Copy: per message, and the last reply with Ctrl+Shift+C
    clipboard = QtGui.QGuiApplication.clipboard()
    user_widget, reply_widget = window.transcript.message_widgets()
    qtbot.mouseClick(user_widget.copy_button, QtCore.Qt.MouseButton.LeftButton)
    assert clipboard.text() == "Write `code`"
    modifiers = (
        QtCore.Qt.KeyboardModifier.ControlModifier | QtCore.Qt.KeyboardModifier.ShiftModifier
    )
    qtbot.keyClick(window, QtCore.Qt.Key.Key_C, modifiers)
    assert (
        clipboard.text() == reply_widget.text == window.store.messages(conversation_id)[1].content
    )
    item = window.conversations.list.currentItem()
    item.setText("Renamed")
    assert window.store.conversation(conversation_id).title == "Renamed"
    exported = window.export_current(tmp_path / "out.md")
    text = exported.read_text()
    assert text.startswith("# Renamed") and "## You" in text and "Write `code`" in text
    window.confirm = lambda question: True  # the user answers Yes
    window._delete_current()
    assert conversation_id not in [c.id for c in window.store.conversations()]
    assert window.current_conversation_id is not None  # a fresh conversation replaces it


def test_chat_regenerate_and_edit_start_from_the_state_before(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    # GIVEN two turns
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=4)
    for text in ("first question", "second question"):
        with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as done:
            type_and_send(qtbot, window, text)
    second = done.args[1]
    # WHEN the user regenerates (Ctrl+R)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as again:
        qtbot.keyClick(window, QtCore.Qt.Key.Key_R, QtCore.Qt.KeyboardModifier.ControlModifier)
    # THEN the reply is replaced, answered from the saved state before the second question
    roles = [m.role for m in window.store.messages(window.current_conversation_id)]
    assert roles == ["user", "assistant", "user", "assistant"]
    regenerated = again.args[1]
    assert regenerated.status.how == "snapshot"
    assert regenerated.status.tokens_fed_total <= regenerated.stats.prompt_tokens + 4
    # greedy: same state, same question, same reply length -> same tokens seen
    assert regenerated.status.tokens_seen == second.status.tokens_seen
    # WHEN the user edits the last message (Ctrl+E) and sends it
    qtbot.keyClick(window, QtCore.Qt.Key.Key_E, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert window.composer.text() == "second question"
    window.composer.set_text("an edited question")
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        qtbot.keyClick(window.composer.input, QtCore.Qt.Key.Key_Return)
    messages = window.store.messages(window.current_conversation_id)
    assert [m.content for m in messages if m.role == "user"] == [
        "first question",
        "an edited question",
    ]


def test_chat_without_model_says_how_to_get_one(qtbot: Any, make_window: Any) -> None:
    def no_model(path: str | None, device: str, quant: str = "none") -> Any:
        raise EngineError("no embedded default model")

    window = make_window(no_model)
    qtbot.waitUntil(lambda: "No model" in window.transcript.placeholder.text(), timeout=WAIT_MS)
    text = window.transcript.placeholder.text()
    assert "No model is loaded" in text and "Settings" in text and "config.json" in text
    # a message typed now is kept in the composer, not lost
    type_and_send(qtbot, window, "hello?")
    assert window.composer.text() == "hello?"
    assert window.store.messages(window.current_conversation_id) == []
    assert "No model" in window.status.currentMessage()


def test_chat_load_error_is_shown_as_written(qtbot: Any, make_window: Any) -> None:
    reason = "/home/me/my_models/x_y/config.json: bad <locals> *value* [1] `q`"

    def broken(path: str | None, device: str, quant: str = "none") -> Any:
        raise EngineError(reason)

    # GIVEN a model whose load error names paths and symbols Markdown would reformat
    window = make_window(broken)
    qtbot.waitUntil(lambda: "No model" in window.transcript.placeholder.text(), timeout=WAIT_MS)
    # THEN the placeholder shows the error exactly as written, and the advice after it
    shown = placeholder_shown(window)
    assert reason in shown and "choose a checkpoint directory" in shown


def test_chat_slow_model_warning_is_shown(qtbot: Any, make_window: Any) -> None:
    script = FakeScript()

    def slow(path: str | None, device: str, quant: str = "none") -> FakeEngine:
        engine = FakeEngine(script)
        engine.info = type(engine.info)(
            "big", "/big", "cpu", "float32", 4_000_000_000, 1, False, "expect minutes per reply"
        )
        return engine

    window = loaded(qtbot, make_window(slow))
    assert window.banner.isVisibleTo(window)
    assert "expect minutes per reply" in window.banner.text()


def test_chat_failure_mid_reply_becomes_a_message(qtbot: Any, make_window: Any) -> None:
    script = FakeScript(fail_with="the device ran out of memory")
    window = loaded(qtbot, make_window(FakeEngine.factory(script)))
    with qtbot.waitSignal(window.engine_client.generation_failed, timeout=WAIT_MS):
        type_and_send(qtbot, window, "hi")
    assert "ran out of memory" in window.status.currentMessage()
    assert [m.role for m in window.store.messages(window.current_conversation_id)] == ["user"]
    assert window.controller.reply is None and window.composer.send_button.isVisibleTo(window)


def test_chat_window_stays_responsive_while_model_loads(qtbot: Any, make_window: Any) -> None:
    script = FakeScript(load_seconds=1.0)
    window = make_window(FakeEngine.factory(script))
    # the status bar says so once the engine thread reports what it is loading (a queued signal)
    qtbot.waitUntil(lambda: "Loading" in window.status.model.text(), timeout=WAIT_MS)
    assert window.engine_client.is_loading
    # the GUI thread handles input while the engine thread loads; a message sent now waits
    type_and_send(qtbot, window, "queued while loading")
    assert window.controller.reply is not None
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        pass
    assert finished.args[1].text == "".join(script.words)


def test_chat_quit_during_reply_cancels_and_saves(
    qtbot: Any, make_window: Any, data_dir: Path
) -> None:
    script = FakeScript(words=("word ",) * 10_000, seconds_per_token=0.005)
    window = loaded(qtbot, make_window(FakeEngine.factory(script)))
    type_and_send(qtbot, window, "go on forever")
    assert script.started.wait(5)
    conversation_id = window.current_conversation_id
    window.close()  # cancels, joins the engine thread, records the final state
    assert not window.engine_client._thread.isRunning()
    from app.history.store import HistoryStore

    store = HistoryStore(data_dir)
    assert [m.role for m in store.messages(conversation_id)] == ["user", "assistant"]


def test_chat_markdown_code_blocks_are_shaded(qtbot: Any) -> None:
    from app.chat.markdown import markdown_html

    shade = QtGui.QColor("#123456")
    html = markdown_html("Run:\n\n```bash\nmake app\n```\n\nthen **wait**.", shade)
    assert "make app" in html and "#123456" in html and "font-weight" in html
    assert "#123456" not in markdown_html("no code here", shade)


def test_chat_user_text_shows_as_typed_and_replies_as_markdown(qtbot: Any) -> None:
    from app.chat.transcript_view import MessageWidget
    from app.history.models import Message

    typed = "my_var = other_var * 2  # see <https://x>, <b>not bold</b>"
    widgets = {
        role: MessageWidget(Message(i, 1, role, text, created_at=0.0))
        for i, (role, text) in enumerate(
            (("user", typed), ("event", "Read my_scan_2.pdf (3 pages)"), ("assistant", "**b**"))
        )
    }
    for widget in widgets.values():
        qtbot.addWidget(widget)
    # the user's own text and event lines are plain text, exactly as written
    assert widgets["user"].body.textFormat() == QtCore.Qt.TextFormat.PlainText
    assert widgets["user"].body.text() == typed
    assert widgets["event"].body.text() == "Read my_scan_2.pdf (3 pages)"
    # a reply renders its Markdown
    assert widgets["assistant"].body.textFormat() == QtCore.Qt.TextFormat.RichText
    assert "font-weight" in widgets["assistant"].body.text()


def test_chat_pane_api_docks_a_pane_and_attaches_an_image(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    # GIVEN the window, as another pane (capture, reader, webcam) sees it
    window = make_window(tiny_factory)
    pane = QtWidgets.QLabel("a pane")
    # WHEN a pane docks itself and sends a capture to the chat
    dock = window.add_side_pane("Test pane", pane)
    window.attach_image(np.zeros((8, 12, 3), np.uint8))
    window.attach_image(np.zeros((8, 12), np.uint8))  # wrong shape: a message, no crash
    # THEN the pane is docked with a View toggle, the image is in the composer
    assert dock.widget() is pane and dock.toggleViewAction() in window._view_menu.actions()
    assert window.composer.thumbnail_count() == 1
    assert "Cannot attach" in window.status.currentMessage()
    assert window.current_conversation_id is not None


def test_chat_settings_refuse_a_non_checkpoint_and_save_a_good_one(
    qtbot: Any, make_window: Any, tiny_factory: Any, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from app.chat.settings_dialog import SettingsDialog

    window = loaded(qtbot, make_window(tiny_factory))
    dialog = SettingsDialog(window.settings, window)
    dialog.model_dir.setText(str(tmp_path))  # an empty directory
    dialog.accept()
    assert "config.json" in dialog.problem.text()
    assert dialog.result() != QtWidgets.QDialog.DialogCode.Accepted
    assert window.settings.get("model_dir") == ""
    dialog.model_dir.setText(str(tiny_checkpoint))
    dialog.theme.setCurrentText("dark")
    dialog.accept()
    assert window.settings.get("model_dir") == str(tiny_checkpoint)
    assert window.settings.get("theme") == "dark"
    # the choice is saved in the data directory, readable by the user alone
    assert (window.store.data_dir / "settings.ini").stat().st_mode & 0o077 == 0


def test_chat_quantized_weights_from_the_settings(
    qtbot: Any, make_window: Any, tiny_checkpoint: Path
) -> None:
    from app.engine_client import load_engine

    # GIVEN the app started on a checkpoint with int8 weights chosen
    window = loaded(
        qtbot,
        make_window(
            load_engine, "--model", str(tiny_checkpoint), "--device", "cpu", "--quant", "int8"
        ),
    )
    # THEN the engine quantized the model at load time and the status bar says so
    assert window.engine_client.model_info.quantization == "int8"
    assert "int8" in window.status.model.text()
    # WHEN a message is sent THEN the quantized model answers it
    _set_sampling(window, max_new_tokens=4)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        type_and_send(qtbot, window, "hello")
    assert finished.args[1].stats.generated_tokens > 0


def test_engine_client_answers_a_fresh_question_by_beam_search(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    from engine import SamplingParams

    # GIVEN the app on the real tiny engine (the region capture asks like this, with beams for
    # the embedded model)
    window = loaded(qtbot, make_window(tiny_factory))
    client = window.engine_client
    image = np.full((28, 56, 3), 200, np.uint8)
    params = SamplingParams(max_new_tokens=4, num_beams=3)
    # WHEN a fresh session is asked about an image with three beams
    with qtbot.waitSignal(client.generation_finished, timeout=WAIT_MS) as asked:
        client.ask_forked(None, "Read the text in the image.", (image,), params)
    # THEN the reply comes whole, its stats say how it ended, and no conversation moved
    result = asked.args[1]
    assert result.stats.stop_reason in ("eos", "length") and not result.stats.cancelled
    assert 0 < result.stats.generated_tokens <= 4
    assert isinstance(result.text, str) and result.snapshot is None


def test_engine_client_frames_fork_and_document_jobs(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    from engine import SamplingParams

    # GIVEN a conversation with one turn
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=3)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as first:
        type_and_send(qtbot, window, "hello")
    client, conversation_id = window.engine_client, window.current_conversation_id
    base = first.args[1].status.tokens_seen

    # WHEN camera frames are fed, THEN they enter the conversation's state
    frames = [np.full((28, 28, 3), 40 * i, np.uint8) for i in range(3)]
    with qtbot.waitSignal(client.job_finished, timeout=WAIT_MS) as fed:
        request_id = client.feed_frames(conversation_id, frames)
    assert fed.args[0] == request_id and not fed.args[1].cancelled
    after_frames = fed.args[1].status.tokens_seen
    assert after_frames > base

    # WHEN a question is asked about a fork, THEN it streams, and the state does not move
    with qtbot.waitSignal(client.generation_finished, timeout=WAIT_MS) as asked:
        client.ask_forked(
            conversation_id, "what did you see?", (), SamplingParams(max_new_tokens=3)
        )
    assert asked.args[1].snapshot is None and asked.args[1].status.tokens_seen > after_frames
    with qtbot.waitSignal(client.status_changed, timeout=WAIT_MS) as reopened:
        client.open_conversation(window.controller.target(conversation_id))
    assert reopened.args[0].how == "memory" and reopened.args[0].tokens_seen == after_frames

    # WHEN a 5-page document is read and cancelled after its first page
    pages = [np.full((56, 42, 3), 255 - 30 * i, np.uint8) for i in range(5)]
    progress: list[int] = []

    def on_progress(rid: int, done: int, total: int) -> None:
        progress.append(done)
        if done >= 1:
            client.cancel(rid)

    client.job_progress.connect(on_progress)
    with qtbot.waitSignal(client.job_finished, timeout=WAIT_MS) as read:
        client.read_document(conversation_id, pages, "report.pdf")
    # THEN the pages read stay in memory, the state is saved, the transcript says what happened
    result = read.args[1]
    assert result.cancelled and 1 <= result.done < 5 and result.total == 5
    assert progress[0] == 0 and max(progress) == result.done
    event = window.store.messages(conversation_id)[-1]
    assert event.role == "event"
    assert event.content == f"Read report.pdf ({result.done} of 5 pages) into memory. Cancelled."
    assert window.store.snapshots(conversation_id)[-1].message_id == event.id
    assert window.transcript.message_widgets()[-1].text == event.content


def test_engine_client_failed_document_leaves_no_event(qtbot: Any, make_window: Any) -> None:
    def no_model(path: str | None, device: str, quant: str = "none") -> Any:
        raise EngineError("no model here")

    window = make_window(no_model)
    qtbot.waitUntil(lambda: not window.engine_client.is_loading, timeout=WAIT_MS)
    client = window.engine_client
    with qtbot.waitSignal(client.job_failed, timeout=WAIT_MS) as failed:
        client.read_document(window.current_conversation_id, [np.zeros((8, 8, 3), np.uint8)], "x")
    assert "No model is loaded" in failed.args[1]
    assert window.store.messages(window.current_conversation_id) == []


def test_chat_switching_conversation_mid_reply_keeps_the_reply_in_its_own(
    qtbot: Any, make_window: Any
) -> None:
    # GIVEN a slow reply streaming in conversation A
    script = FakeScript(words=("tick ",) * 40, seconds_per_token=0.01)
    window = loaded(qtbot, make_window(FakeEngine.factory(script)))
    type_and_send(qtbot, window, "count")
    first = window.current_conversation_id
    assert script.started.wait(5)
    # WHEN the user opens a new conversation before it ends
    qtbot.keyClick(window, QtCore.Qt.Key.Key_N, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert window.current_conversation_id != first
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS):
        pass
    # THEN the reply is stored in A, B's transcript is untouched, and B's state is made live
    assert window.store.messages(first)[-1].content == "tick " * 40
    assert window.transcript.message_widgets() == []
    qtbot.waitUntil(lambda: window.controller.session_status is not None, timeout=WAIT_MS)
    assert window.controller.session_status.conversation_id == window.current_conversation_id
    window.controller.open_conversation(first)
    assert window.transcript.message_widgets()[-1].text == "tick " * 40


def test_chat_conversation_options_system_prompt_and_sampling(
    qtbot: Any, make_window: Any, tiny_factory: Any
) -> None:
    from app.chat.options_dialog import ConversationOptionsDialog

    # GIVEN a conversation with one reply
    window = loaded(qtbot, make_window(tiny_factory))
    _set_sampling(window, max_new_tokens=2)
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as first:
        type_and_send(qtbot, window, "hi")
    assert first.args[1].stats.generated_tokens <= 2
    # WHEN the user sets a system prompt and a longer reply in the options dialog
    conversation = window.store.conversation(window.current_conversation_id)
    dialog = ConversationOptionsDialog(conversation.system_prompt, conversation.sampling, window)
    dialog.system_prompt.setPlainText("You are terse.")
    dialog.max_new_tokens.setValue(5)
    dialog.temperature.setValue(0.7)
    dialog.seed.setValue(11)
    prompt, sampling = dialog.values()
    assert sampling == {"max_new_tokens": 5, "temperature": 0.7, "seed": 11}
    window.controller.set_options(conversation.id, prompt, sampling)
    # THEN the next reply follows them, re-reading the history under the new prompt
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as second:
        type_and_send(qtbot, window, "again")
    assert second.args[1].stats.generated_tokens <= 5
    assert second.args[1].status.how == "history"
    assert "re-read" in window.status.currentMessage() or "stored messages" in (
        window.status.currentMessage()
    )


def test_chat_theme_follows_the_setting(qtbot: Any) -> None:
    from app.main import apply_theme

    app = QtWidgets.QApplication.instance()
    window_color = QtGui.QPalette.ColorRole.Window
    system = app.palette().color(window_color)
    apply_theme("dark")
    assert app.palette().color(window_color).lightness() < 100
    apply_theme("light")
    assert app.palette().color(window_color).lightness() > 150
    apply_theme("system")
    assert app.palette().color(window_color) == system


def test_chat_unexpected_error_in_a_slot_becomes_a_status_message(
    qtbot: Any, make_window: Any, tiny_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from app.main import report_unexpected_errors

    window = make_window(tiny_factory)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    report_unexpected_errors(window)
    try:
        raise OSError("disk full")
    except OSError:
        sys.excepthook(*sys.exc_info())
    assert "disk full" in window.status.currentMessage()


def test_chat_failed_state_save_keeps_the_reply_and_says_so(qtbot: Any, make_window: Any) -> None:
    # GIVEN a disk that refuses the state file
    script = FakeScript(save_error="No space left on device")
    window = loaded(qtbot, make_window(FakeEngine.factory(script)))
    # WHEN a reply ends
    with qtbot.waitSignal(window.controller.reply_finished, timeout=WAIT_MS) as finished:
        type_and_send(qtbot, window, "hi")
    # THEN the reply is kept, no snapshot is recorded or left behind, and the user is told
    assert finished.args[1].snapshot is None
    assert window.store.messages(window.current_conversation_id)[-1].content == "".join(
        script.words
    )
    assert window.store.snapshots(window.current_conversation_id) == []
    assert list(window.store.snapshots_dir.iterdir()) == []
    assert "No space left" in window.status.currentMessage()
