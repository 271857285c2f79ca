"""File > Models…: download from a loopback hub with progress and cancel, use, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6 import QtCore, QtWidgets

from engine import Engine
from tests.engine.fake_hub import FakeHub, HubRepo

pytestmark = pytest.mark.gui

WAIT_MS = 20_000
REPO = "tiny-org/tiny-infinitevl"


@pytest.fixture
def hub(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    with FakeHub({REPO: HubRepo.from_dir(tiny_checkpoint)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def _real_engine(path: str | None, device: str, quant: str = "none") -> Any:
    return Engine.load(path, device="cpu")


def test_models_dialog_download_use_delete(qtbot: Any, make_window: Any, hub: FakeHub) -> None:
    # GIVEN the app and its Models dialog, opened from the File menu
    window = make_window(_real_engine)
    dialog = window.models_dialog
    file_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&File")
    (action,) = [a for a in file_menu.actions() if a.text() == "&Models…"]
    action.trigger()
    qtbot.waitUntil(dialog.isVisible, timeout=WAIT_MS)
    # nothing was sent to the hub before the user asked for a download
    assert hub.log == []
    # WHEN the user types a model and presses Download (a slow hub, to see progress)
    hub.chunk_delay = 0.02
    values: list[int] = []
    dialog.progress.valueChanged.connect(values.append)
    with qtbot.waitSignal(dialog.download_finished, timeout=WAIT_MS) as finished:
        qtbot.keyClicks(dialog.repo_input, REPO)
        qtbot.mouseClick(dialog.download_button, QtCore.Qt.MouseButton.LeftButton)
        assert dialog.cancel_button.isVisibleTo(dialog)
    # THEN progress rose to the end and the model is listed
    assert values and values[-1] == dialog.progress.maximum() and len(set(values)) > 2
    path = finished.args[0]
    qtbot.waitUntil(lambda: dialog.table.rowCount() == 1, timeout=WAIT_MS)
    assert dialog.table.item(0, 3).text() == path
    # WHEN it is selected and used
    dialog.table.selectRow(0)
    with qtbot.waitSignal(window.engine_client.model_loaded, timeout=WAIT_MS) as loaded:
        qtbot.mouseClick(dialog.use_button, QtCore.Qt.MouseButton.LeftButton)
    # THEN the app runs on it, and remembers it
    assert str(loaded.args[0].path) == path
    assert window.settings.get("model_dir") == path
    assert "(in use)" in dialog.table.item(0, 0).text()
    # WHEN the model in use is to be deleted: refused with a message
    dialog.table.selectRow(0)
    qtbot.mouseClick(dialog.delete_button, QtCore.Qt.MouseButton.LeftButton)
    assert "in use" in dialog.message.text()
    # WHEN the embedded default is chosen instead, the downloaded model can be deleted
    outcomes: list[str] = []
    window.engine_client.model_loaded.connect(lambda _info: outcomes.append("loaded"))
    window.engine_client.model_load_failed.connect(outcomes.append)
    qtbot.mouseClick(dialog.default_button, QtCore.Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(outcomes), timeout=WAIT_MS)
    assert outcomes[0] == "loaded"
    assert window.settings.get("model_dir") == ""
    dialog.table.selectRow(0)
    with qtbot.waitSignal(dialog.models_listed, timeout=WAIT_MS):
        dialog.delete(dialog.selected_model())
    qtbot.waitUntil(lambda: dialog.table.rowCount() == 0, timeout=WAIT_MS)
    assert not Path(path).exists()


def test_models_dialog_cancel_and_bad_name(
    qtbot: Any, make_window: Any, tiny_factory: Any, hub: FakeHub
) -> None:
    window = make_window(tiny_factory)
    dialog = window.models_dialog
    dialog.show()
    # a malformed name is a message, no request
    dialog.repo_input.setText("not a model name")
    qtbot.mouseClick(dialog.download_button, QtCore.Qt.MouseButton.LeftButton)
    assert "org/name" in dialog.message.text() and hub.log == []
    # GIVEN a slow download
    hub.chunk_delay = 0.2
    dialog.start_download(REPO)
    qtbot.waitUntil(
        lambda: dialog.progress.maximum() > 0 and dialog.progress.value() > 0, timeout=WAIT_MS
    )
    # WHEN the user cancels: THEN it stops with a message, the window kept answering
    with qtbot.waitSignal(dialog.download_failed, timeout=WAIT_MS) as failed:
        qtbot.mouseClick(dialog.cancel_button, QtCore.Qt.MouseButton.LeftButton)
    assert "cancelled" in failed.args[0]
    assert not dialog.is_downloading and dialog.download_button.isEnabled()
    # an unknown model is a message in the dialog
    with qtbot.waitSignal(dialog.download_failed, timeout=WAIT_MS) as failed:
        dialog.start_download("tiny-org/absent")
    assert "no model 'tiny-org/absent'" in failed.args[0]
    assert "no model" in dialog.message.text()
    assert isinstance(dialog, QtWidgets.QDialog)
