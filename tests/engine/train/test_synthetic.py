"""Synthetic data: deterministic per seed, readable ground truth, labels on replies only."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.ocr_lines import (
    MIN_TEXT_HEIGHT,
    band_pieces,
    enlarge_small_text,
    reading_pieces,
    text_height,
)
from engine.train.config import TrainConfig
from engine.train.fonts import draws_latin, find_fonts
from engine.train.synthetic.dialogs import BUTTONS, render_dialog
from engine.train.synthetic.lines import render_line, unseen_text
from engine.train.synthetic.tasks import (
    OCR_PROMPT,
    REFERENCE_QUESTION,
    TaskMix,
    longdoc_sample,
    make_sample,
)
from engine.train.text_sources import TextSource

TASKS = (
    "ocr_word",
    "ocr_line",
    "ocr_unseen",
    "ocr_screen",
    "ocr_dialog",
    "ocr_page",
    "ocr_code",
    "ocr_table",
    "ocr_receipt",
    "qa",
    "longdoc",
)


@pytest.fixture(scope="module")
def src() -> TextSource:
    return TextSource.from_stdlib()


@pytest.fixture(scope="module")
def fonts() -> list:
    return find_fonts()


@pytest.mark.parametrize("task", TASKS)
def test_make_sample_is_deterministic(task: str, src: TextSource, fonts: list) -> None:
    mix = TaskMix({task: 1.0}, num_pages=(2, 3))
    a = make_sample(random.Random(7), src, fonts, mix)
    b = make_sample(random.Random(7), src, fonts, mix)
    c = make_sample(random.Random(8), src, fonts, mix)
    assert a.messages == b.messages
    assert all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(a.images, b.images, strict=True)
    )
    assert a.messages[-1].content.strip(), "every sample has a non-empty answer"
    assert a.messages != c.messages or not np.array_equal(
        np.asarray(a.images[0]), np.asarray(c.images[0])
    )


def test_ocr_answer_is_the_rendered_text(src: TextSource, fonts: list) -> None:
    s = make_sample(random.Random(3), src, fonts, TaskMix({"ocr_screen": 1.0}))
    assert s.messages[0].content.endswith(OCR_PROMPT)
    # the title bar is the first line read
    assert s.messages[1].content.splitlines()[0] == s.meta["text"].splitlines()[0]
    image = np.asarray(s.images[0])
    assert image.std() > 10, "something was drawn"


def test_longdoc_answer_sits_on_page_one(src: TextSource, fonts: list) -> None:
    s = longdoc_sample(random.Random(5), src, fonts, num_pages=4, page_size=224)
    assert len(s.images) == 4
    assert s.messages[0].content.startswith("Page 1: <image>\nPage 2: <image>\n")
    assert s.messages[0].content.count("<image>") == 4
    assert s.messages[1].content == REFERENCE_QUESTION
    assert s.messages[2].content.isdigit() and len(s.messages[2].content) == 4


def test_fonts_come_from_packages(fonts: list) -> None:
    assert len(fonts) >= 10
    assert any("Mono" in f.name for f in fonts)


def test_every_font_draws_the_text_it_is_given(fonts: list) -> None:
    # a face without Latin glyphs (DejaVu's "Display" faces draw nothing) would pair a blank
    # picture with text the model then learns to make up
    for path in fonts:
        r = render_line(random.Random(0), "Invoice 4471", [path], 400)
        assert r.lines == ["Invoice 4471"]
        ink = np.abs(np.asarray(r.image.convert("L"), dtype=int) - np.median(r.image.convert("L")))
        assert (ink > 60).sum() > 40, f"{path.name} drew no text"
    display = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansDisplay.ttf")
    if display.exists():
        assert not draws_latin(display)
        assert display.name not in {f.name for f in fonts}


def test_size_multiple_pads_without_changing_the_text(src: TextSource, fonts: list) -> None:
    plain = make_sample(random.Random(4), src, fonts, TaskMix({"ocr_screen": 1.0}))
    padded = make_sample(
        random.Random(4), src, fonts, TaskMix({"ocr_screen": 1.0}, size_multiple=112)
    )
    assert padded.messages == plain.messages
    w, h = padded.images[0].size
    assert w % 112 == 0 and h % 112 == 0
    pw, ph = plain.images[0].size
    assert np.array_equal(np.asarray(padded.images[0])[:ph, :pw], np.asarray(plain.images[0]))


@pytest.mark.parametrize("task", ["ocr_unseen", "ocr_word"])
def test_reading_view_shows_small_lines_as_ocr_shows_them(
    src: TextSource, fonts: list, task: str
) -> None:
    # GIVEN toolkit-sized lines or single words (9-11 px fonts), plain and in the reading view
    plain = TaskMix({task: 1.0}, line_size=(9, 11))
    shown = TaskMix({task: 1.0}, line_size=(9, 11), reading_view=True)
    cuts = 0
    for seed in range(6):
        a = make_sample(random.Random(seed), src, fonts, plain)
        b = make_sample(random.Random(seed), src, fonts, shown)
        # THEN the picture is one that OCR hands the model for that line
        assert text_height(a.images[0]) < MIN_TEXT_HEIGHT
        pieces = reading_pieces(a.images[0])
        views = [np.asarray(p.image) for p in pieces]
        at = [i for i, p in enumerate(views) if np.array_equal(p, np.asarray(b.images[0]))]
        assert len(at) == 1 and b.images[0].height > a.images[0].height
        # AND its text is what that piece shows: the whole line's, or the words cut with it
        line, said = a.messages[1].content, b.messages[1].content
        if len(pieces) == 1:
            assert b.messages == a.messages
        else:
            cuts += 1
            assert said in line and said == said.strip() and said
            words = line.split(" ")
            starts = [len(" ".join(words[:k])) + (k > 0) for k in range(len(words))]
            assert line.index(said) in starts  # whole words where the cut is between words
        # AND the glyph centres moved with the picture: scaled, then shifted by the widening
        (left, right) = band_pieces(a.images[0])[at[0]]
        crop = a.images[0].crop((left, 0, right, a.images[0].height))
        enlarged = enlarge_small_text(crop, text_height(a.images[0]))
        scale = enlarged.width / crop.width
        # (a piece is scaled as its whole line is, however few rows its own letters fill)
        assert enlarged.height == b.images[0].height
        pad = (b.images[0].width - enlarged.width) // 2
        first_a = next(g for g in a.glyphs[0] if left <= g.x < right)  # type: ignore[index]
        first_b = b.glyphs[0][0]  # type: ignore[index]
        assert first_b.char == first_a.char == said[0]
        assert first_b.x == pytest.approx(pad + (first_a.x - left) * scale)
    if task == "ocr_unseen":
        assert cuts >= 2  # lines of up to 60 characters: most are cut


def test_line_size_comes_from_the_config_and_is_checked() -> None:
    cfg = TrainConfig.from_dict(
        {
            "stage": "sft",
            "init": "m",
            "out_dir": "o",
            "data": {"weights": {"ocr_line": 1.0}, "line_size": [10, 14]},
        }
    )
    assert cfg.data.line_size == (10, 14)
    with pytest.raises(ConfigError, match=r"line_size \(14, 10\)"):
        TrainConfig.from_dict(
            {
                "stage": "sft",
                "init": "m",
                "out_dir": "o",
                "data": {"weights": {"ocr_line": 1.0}, "line_size": [14, 10]},
            }
        )


@pytest.mark.parametrize("max_width", [40, 120, 800])
def test_a_line_is_cut_to_the_region_and_stays_one_line(
    max_width: int, src: TextSource, fonts: list
) -> None:
    text = "Retry the transfer after the connection to the server is restored"
    for seed in range(5):
        r = render_line(random.Random(seed), text, fonts, max_width)
        assert r.image.width <= max_width
        assert len(r.lines) == 1 and r.lines[0]
        # whole words from the start of the text, or the start of the first word when none fits
        assert text.startswith(r.lines[0])
        assert np.asarray(r.image).std() > 5, "the line is drawn"


def test_unseen_text_cannot_be_recalled_from_the_source(src: TextSource) -> None:
    # GIVEN many lines of unseen text
    rng = random.Random(3)
    lines = [unseen_text(rng, max_chars=40) for _ in range(300)]
    # THEN each is printable ASCII within the length asked, and they hardly repeat
    assert all(0 < len(t) <= 40 and t.isascii() and t.isprintable() for t in lines)
    assert len(set(lines)) > 290
    # AND a model cannot recite them: no line is a sentence of the text source, and few of
    # their letter strings are words of it (the source's words are what a model learns by heart)
    sentences = set(src.sentences)
    assert not [t for t in lines if t in sentences]
    words = [w for t in lines for w in re.findall(r"[A-Za-z]{4,}", t)]
    known = set(src.words)
    assert words and sum(w in known for w in words) / len(words) < 0.05


def test_a_dialog_says_what_it_draws(src: TextSource, fonts: list) -> None:
    # GIVEN dialogs of many seeds and widths
    for seed in range(20):
        rng = random.Random(seed)
        r = render_dialog(rng, src, fonts, rng.randint(240, 800))
        # THEN every character of the truth was drawn, and nothing else (a glyph each)
        assert [g.char for g in r.glyphs] == [ch for ln in r.lines for ch in ln if not ch.isspace()]
        # AND it reads title first, buttons last, inside a picture cropped to its rows
        assert r.lines[0] == r.facts["title"]
        button_words = " ".join(BUTTONS).split()
        assert r.lines[-1] and all(w in button_words for w in r.lines[-1].split(" "))
        glyph_bottom = max(g.y for g in r.glyphs)
        assert glyph_bottom < r.image.height <= glyph_bottom + 60
        assert all(0 <= g.x <= r.image.width for g in r.glyphs)
