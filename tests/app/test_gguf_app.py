"""A GGUF model chosen in the app: the settings accept it (and only real GGUF files), the app
loads it through llama.cpp, answers, and resumes the conversation from llama.cpp's saved state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from PySide6 import QtWidgets

pytest.importorskip("llama_cpp", reason="the GGUF backend needs llama-cpp-python (extra 'gguf')")
pytest.importorskip("gguf", reason="writing test GGUF files needs the gguf package (extra 'gguf')")

from app.chat.settings_dialog import SettingsDialog  # noqa: E402
from app.engine_client import load_engine  # noqa: E402
from tests.app.flows import ask, loaded, opened_status  # noqa: E402
from tests.engine.backends.tiny_gguf import write_qwen2_gguf  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_gguf(tiny_teacher_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen2_gguf(tiny_teacher_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_settings_accept_a_gguf_file_and_refuse_fakes(
    qtbot: Any, make_window: Any, tiny_factory: Any, tiny_gguf: Path, tmp_path: Path
) -> None:
    window = loaded(qtbot, make_window(tiny_factory))
    dialog = SettingsDialog(window.settings, window)
    # GIVEN a file named .gguf that is no GGUF, and a file of another kind
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    locked = tmp_path / "locked.gguf"
    locked.write_bytes(b"GGUF")
    locked.chmod(0)
    cases = [(fake, "GGUF header"), (other, "neither a checkpoint")]
    if os.geteuid() != 0:  # root reads any file
        cases.append((locked, "cannot be read"))
    for path, says in cases:
        dialog.model_dir.setText(str(path))
        dialog.accept()
        # THEN each is refused with what is wrong, and nothing is saved
        assert says in dialog.problem.text()
        assert dialog.result() != QtWidgets.QDialog.DialogCode.Accepted
        assert window.settings.get("model_dir") == ""
    # WHEN the real GGUF file is chosen THEN the precision choice is off (the file sets it)
    dialog.model_dir.setText(str(tiny_gguf))
    assert not dialog.quant.isEnabled()
    dialog.accept()
    assert window.settings.get("model_dir") == str(tiny_gguf)
    dialog.model_dir.setText("")
    assert dialog.quant.isEnabled()


def test_app_answers_with_a_gguf_model_and_resumes_from_its_state(
    qtbot: Any, make_window: Any, tiny_gguf: Path
) -> None:
    # GIVEN the app started on a GGUF model (the weight precision setting does not apply to it)
    window = loaded(qtbot, make_window(load_engine, "--model", str(tiny_gguf), "--quant", "int8"))
    assert window.engine_client.model_info is not None
    assert "tiny" in window.status.model.text()
    window.store.set_options(window.current_conversation_id, "", {"max_new_tokens": 4})
    # WHEN a message is sent THEN llama.cpp answers it and the state is saved
    first = ask(qtbot, window, "the river delta has many birds and a long history of floods")
    assert first.stats.generated_tokens > 0 and first.snapshot is not None
    conversation_id = window.current_conversation_id
    window.close()

    # WHEN the app starts again on the same data directory
    window = make_window(load_engine, "--model", str(tiny_gguf))
    status = opened_status(qtbot, window)
    # THEN the conversation reopens from llama.cpp's saved state, history not re-read
    assert window.current_conversation_id == conversation_id
    assert status.how == "snapshot" and status.tokens_fed_total == 0
    assert status.tokens_seen == first.status.tokens_seen
    second = ask(qtbot, window, "and then?")
    assert second.stats.generated_tokens > 0
    assert second.status.tokens_fed_total <= second.stats.prompt_tokens + 4
