"""benchmarks/eval_default_model.py: the command that scores the embedded model."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from benchmarks import qt_screens
from benchmarks.eval_default_model import cer, main, tesseract
from engine import default_model


@pytest.mark.parametrize(
    "args", [["--num", "0"], ["--docs", "-1"], ["--pages", "0"], ["--beams", "0"]]
)
def test_bad_counts_are_refused_before_loading(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_is_refused_where_there_is_none(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(
    default_model.find_default_model(default_model.DEFAULT_MODEL_DIR) is None,
    reason="this checkout holds no embedded default model",
)
def test_one_image_per_set_without_documents(capsys: pytest.CaptureFixture[str]) -> None:
    # --docs 0 measures OCR and latency only: no row for the long documents (it used to crash)
    threads = torch.get_num_threads()  # main sets the process's thread count
    try:
        _run_and_check(capsys)
    finally:
        torch.set_num_threads(threads)


def _run_and_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--num", "1", "--docs", "0", "--max-new-tokens", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    sets = ["single words", "text lines", "unseen text lines", "screenshots", "document pages"]
    if qt_screens.has_qt():  # dialogs drawn by real Qt widgets, where the app's toolkit is
        sets += ["Qt widget dialogs", "Qt dialogs, dark theme"]
    assert [r.split(" | ")[0][2:] for r in rows[2 : 2 + len(sets)]] == sets
    assert "page-1 answers" not in out
    assert any(r.startswith("| OCR latency, 800x200 region") for r in rows)


@pytest.mark.skipif(not qt_screens.has_qt(), reason="needs PySide6 (the app's toolkit)")
def test_qt_dialogs_are_drawn_with_their_text() -> None:
    # GIVEN two dialogs from one seed and one from another
    a_image, a_text = qt_screens.widget_screen(random.Random(3))
    b_image, b_text = qt_screens.widget_screen(random.Random(3))
    c_image, c_text = qt_screens.widget_screen(random.Random(4))
    # THEN a seed draws the same dialog, and another seed another one
    assert a_text == b_text and np.array_equal(np.asarray(a_image), np.asarray(b_image))
    assert (a_text, a_image.size) != (c_text, c_image.size)
    # AND the truth is the title, the messages and a row of buttons, and it was drawn (Tesseract,
    # where installed, reads it back)
    lines = a_text.splitlines()
    assert lines[0] in qt_screens.TITLES and len(lines) >= 3
    assert any(lines[-1].startswith(b) for b in qt_screens.BUTTONS)
    assert np.asarray(a_image.convert("L")).std() > 10
    if shutil.which("tesseract"):
        assert cer([tesseract(a_image, 3)], [a_text]) < 0.2


@pytest.mark.skipif(not qt_screens.has_qt(), reason="needs PySide6 (the app's toolkit)")
def test_a_dark_theme_draws_the_same_dialog_light_on_dark() -> None:
    # GIVEN one seed's dialog in the default theme and in the dark one
    light, light_text = qt_screens.widget_screen(random.Random(3))
    dark, dark_text = qt_screens.widget_screen(random.Random(3), dark=True)
    # THEN it is the same dialog, its ground dark in the dark theme and light in the other
    assert dark_text == light_text and dark.size == light.size
    assert np.median(np.asarray(dark.convert("L"))) < 90
    assert np.median(np.asarray(light.convert("L"))) > 180
