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
from engine.ocr_lines import as_shown, band_text_heights, piece_boxes
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
        # reading order: the title first (in pieces where OCR cuts it between words)
        title = [t for box, t in written if box[1] == written[0][0][1]]
        assert " ".join(title) == labels[0].text
        for box, _ in written:
            assert 0 <= box[0] < box[2] <= image.width and 0 <= box[1] < box[3] <= image.height
    assert checked >= 8


def _band(line: int, *spans: tuple[int, int]) -> list[tuple[int, tuple[int, int, int, int]]]:
    return [(line, (left, 10, right, 30)) for left, right in spans]


def test_side_by_side_widgets_are_joined_left_to_right() -> None:
    labels = [Label("Cancel", (200, 12, 260, 28)), Label("Save", (100, 12, 160, 28))]
    written, left_out = piece_texts(_band(0, (90, 270)), labels)
    assert written == [((90, 10, 270, 30), "Save Cancel")] and left_out == 0


def test_a_label_cut_between_its_words_is_parted_with_it(src: TextSource) -> None:
    # GIVEN dialogs whose long labels OCR cuts between words (wider than MAX_PIECE heights)
    parted = 0
    for seed in range(40):
        image, labels = draw_dialog(random.Random(seed), src)
        written, _ = piece_texts(piece_boxes(image), labels)
        for lb in labels:
            middle = (lb.box[1] + lb.box[3]) // 2
            alone = [x for x in labels if x.box[1] <= middle < x.box[3]] == [lb]
            texts = [t for box, t in written if box[1] <= middle < box[3]]
            if lb.words and alone and len(texts) > 1:
                # THEN its pieces read, left to right, its words in order
                assert " ".join(texts) == lb.text, (seed, texts)
                parted += 1
    assert parted >= 3


def test_words_are_placed_where_qt_draws_them(src: TextSource) -> None:
    from engine.ocr_lines import _ink

    checked = 0
    for seed in range(10):
        image, labels = draw_dialog(random.Random(seed), src)
        ink = _ink(image)
        for lb in (lb for lb in labels if lb.words):
            rows = ink[lb.box[1] : lb.box[3]]
            assert " ".join(w for w, _, _ in lb.words) == " ".join(lb.text.split())
            for _, left, right in lb.words:
                assert rows[:, left:right].any()
            for (_, _, right), (_, left, _) in zip(lb.words, lb.words[1:], strict=False):
                assert not rows[:, (right + left) // 2].any()  # the space between is blank
                checked += 1
    assert checked >= 50


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
    boxes = piece_boxes(image)
    line, box = boxes[0]
    assert first.messages[1].content == labels[0].text
    shown = as_shown(image.crop(box), band_text_heights(image, boxes)[box[1], box[3]])
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
