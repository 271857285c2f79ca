"""The training set of dialogs drawn by real Qt widgets: pieces as OCR shows them, with the texts
of the widgets they cover, read back by the training pipeline's LLaVA reader."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from app.widget_dialogs import Label, draw_dialog, main, piece_texts, write_set
from engine.ocr import OCR_PROMPT
from engine.ocr_lines import as_shown, piece_boxes
from engine.train.sharegpt import ShareGPTSource
from engine.train.synthetic.tasks import IMAGE_TAG
from engine.train.text_sources import TextSource


@pytest.fixture(scope="module")
def src() -> TextSource:
    return TextSource.from_stdlib()


def test_every_text_of_a_plain_dialog_lands_in_exactly_one_piece(src: TextSource) -> None:
    checked = 0
    for seed in range(12):
        image, labels = draw_dialog(random.Random(seed), src)
        written, left_out = piece_texts(piece_boxes(image), labels)
        if left_out:
            continue
        checked += 1
        assert Counter(" ".join(t for _, t in written).split()) == Counter(
            " ".join(lb.text for lb in labels).split()
        )
        # reading order: the title first, the buttons' row last
        assert written[0][1] == labels[0].text
        for box, _ in written:
            assert 0 <= box[0] < box[2] <= image.width and 0 <= box[1] < box[3] <= image.height
    assert checked >= 8


def _band(line: int, *spans: tuple[int, int]) -> list[tuple[int, tuple[int, int, int, int]]]:
    return [(line, (left, 10, right, 30)) for left, right in spans]


def test_side_by_side_widgets_are_joined_left_to_right() -> None:
    labels = [Label("Cancel", (200, 12, 260, 28)), Label("Save", (100, 12, 160, 28))]
    written, left_out = piece_texts(_band(0, (90, 270)), labels)
    assert written == [((90, 10, 270, 30), "Save Cancel")] and left_out == 0


def test_a_band_that_cannot_be_told_apart_is_left_out() -> None:
    wide = [Label("one label across two pieces", (0, 12, 300, 28))]
    assert piece_texts(_band(0, (0, 100), (200, 300)), wide) == ([], 1)
    lonely = [Label("Save", (0, 12, 90, 28))]  # the second piece holds no widget
    assert piece_texts(_band(0, (0, 100), (200, 300)), lonely) == ([], 1)
    stacked = [Label("upper", (0, 10, 90, 19)), Label("lower", (0, 21, 90, 30))]
    assert piece_texts(_band(0, (0, 100)), stacked) == ([], 1)
    # the other bands are still written
    plain = [Label("Title", (0, 42, 90, 58))]
    boxes = _band(0, (0, 100), (200, 300)) + [(1, (0, 40, 100, 60))]
    assert piece_texts(boxes, wide + plain) == ([((0, 40, 100, 60), "Title")], 1)


def test_the_written_set_reads_back_as_ocr_samples(tmp_path: Path, src: TextSource) -> None:
    summary = write_set(tmp_path, 6, seed=3, src=src)
    assert summary.dialogs == 6 and summary.pieces >= 6 * 3
    records = json.loads((tmp_path / "train.json").read_text())
    assert len(records) == summary.pieces
    source = ShareGPTSource((str(tmp_path / "train.json"),))
    first = source.sample(0)
    assert [m.role for m in first.messages] == ["user", "assistant"]
    assert first.messages[0].content == f"{IMAGE_TAG}{OCR_PROMPT}"
    # the first piece of the first dialog is its title, shown as OCR shows it
    image, labels = draw_dialog(random.Random(3 * 1_000_003), src)
    line, box = piece_boxes(image)[0]
    assert first.messages[1].content == labels[0].text
    shown = as_shown(image.crop(box))
    assert first.images[0].size == shown.size
    assert first.images[0].convert("RGB").tobytes() == shown.convert("RGB").tobytes()
    stored = Image.open(tmp_path / records[0]["images"][0])
    assert stored.mode == "L"  # the grey palette's pieces in one channel


def test_the_same_seed_draws_the_same_set(tmp_path: Path, src: TextSource) -> None:
    write_set(tmp_path / "a", 3, seed=5, src=src)
    write_set(tmp_path / "b", 3, seed=5, src=src)
    assert (tmp_path / "a/train.json").read_text() == (tmp_path / "b/train.json").read_text()
    for name in json.loads((tmp_path / "a/train.json").read_text()):
        path = name["images"][0]
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_the_command_refuses_to_overwrite_a_set(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--dialogs", "1", "--seed", "2"]) == 0
    before = (tmp_path / "train.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--dialogs", "1"])
    assert exc.value.code == 2
    assert (tmp_path / "train.json").read_bytes() == before
