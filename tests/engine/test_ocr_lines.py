"""engine/ocr_lines.py: a screen region or page cut into its bands of text lines, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from engine.ocr_lines import (
    MAX_ENLARGE,
    MAX_PIECE,
    MIN_TEXT_HEIGHT,
    NARROW,
    PATCH_PAIR,
    band_pieces,
    enlarge_small_text,
    join_readings,
    line_bands,
    reading_pieces,
    split_lines,
    text_height,
    widen_to_patches,
    word_cuts,
)

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SAMPLE = Path(__file__).parents[2] / "resources" / "sample.png"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if DEJAVU.is_file():
        return ImageFont.truetype(str(DEJAVU), size)
    return ImageFont.load_default(size)


def _window(
    lines: list[str], frame: bool = True, rules: bool = True
) -> tuple[Image.Image, list[int]]:
    """Lines of text 40 px apart in a framed window, a rule between each; and each line's y."""
    font = _font(20)
    image = Image.new("RGB", (360, 40 * len(lines) + 20), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    if frame:
        draw.rectangle((2, 2, 357, image.height - 3), outline=(90, 90, 90), width=2)
    ys = []
    for i, text in enumerate(lines):
        y = 14 + 40 * i
        draw.text((16, y), text, font=font, fill=(20, 20, 20))
        ys.append(y)
        if rules and i + 1 < len(lines):
            draw.line((10, y + 32, 350, y + 32), fill=(170, 170, 170), width=1)
    return image, ys


@pytest.mark.parametrize("frame", [True, False])
@pytest.mark.parametrize("rules", [True, False])
def test_each_line_is_one_band_in_reading_order(frame: bool, rules: bool) -> None:
    image, ys = _window(["Quarterly report", "Sales grew 12%", "Total: 2,497"], frame, rules)
    bands = line_bands(image)
    assert len(bands) == 3, bands
    for (top, bottom), y in zip(bands, ys, strict=True):
        assert top <= y + 4 and bottom >= y + 18  # the glyphs (20 px font) sit inside
        assert bottom - top < 40  # and no neighbour's
    crops = split_lines(image)
    assert [c.size for c in crops] == [(360, b - t) for t, b in bands]


def test_text_side_by_side_stays_one_band() -> None:
    image = Image.new("RGB", (420, 40), "white")
    draw = ImageDraw.Draw(image)
    for x, cell in [(10, "North"), (160, "1,240"), (300, "1,395")]:
        draw.text((x, 10), cell, font=_font(18), fill="black")
    assert len(line_bands(image)) == 1
    assert split_lines(image) == [image]  # one band: the image itself, not a copy


def test_nothing_to_split() -> None:
    blank = Image.new("RGB", (300, 120), (30, 60, 120))
    assert line_bands(blank) == [] and split_lines(blank) == [blank]
    noise = Image.fromarray(np.full((50, 80, 3), 255, np.uint8))
    noise.putpixel((40, 25), (0, 0, 0))  # one speck is not text
    assert line_bands(noise) == []
    tiny = Image.new("RGB", (1, 1))
    assert split_lines(tiny) == [tiny]


def test_the_sample_screenshot() -> None:
    # resources/sample.png: title, menu, three lines, a four-row table, a button
    bands = line_bands(Image.open(SAMPLE))
    assert len(bands) == 10, bands
    # in order, and padded no further than the middle of the gap between two bands
    assert all(b1[1] <= b2[0] for b1, b2 in zip(bands, bands[1:], strict=False))


def _line(size: int, text: str = "Keep a copy on this computer") -> Image.Image:
    image = Image.new("RGB", (420, size * 2 + 12), (239, 239, 239))
    ImageDraw.Draw(image).text((8, 6), text, font=_font(size), fill=(30, 30, 30))
    return image


def test_small_text_is_enlarged_to_the_height_the_model_reads() -> None:
    band = _line(10)  # a toolkit's 9-point label: its text well under MIN_TEXT_HEIGHT rows
    assert 0 < text_height(band) < MIN_TEXT_HEIGHT
    big = enlarge_small_text(band)
    assert big.width / band.width == pytest.approx(big.height / band.height, rel=0.02)
    assert big.height > band.height
    assert abs(text_height(big) - MIN_TEXT_HEIGHT) <= 2


def test_text_high_enough_or_none_is_left_as_it_is() -> None:
    band = _line(22)
    assert text_height(band) >= MIN_TEXT_HEIGHT
    assert enlarge_small_text(band) is band
    blank = Image.new("RGB", (200, 30), "white")
    assert text_height(blank) == 0 and enlarge_small_text(blank) is blank


def test_tiny_text_is_enlarged_at_most_max_enlarge_times() -> None:
    band = _line(5, "tiny print")
    assert 0 < text_height(band) * MAX_ENLARGE < MIN_TEXT_HEIGHT
    big = enlarge_small_text(band)
    assert big.size == (round(band.width * MAX_ENLARGE), round(band.height * MAX_ENLARGE))


def test_reading_pieces_are_the_bands_with_small_text_enlarged() -> None:
    image = Image.new("RGB", (420, 120), (239, 239, 239))
    draw = ImageDraw.Draw(image)
    draw.text((8, 10), "Storage", font=_font(22), fill="black")
    draw.text((8, 60), "Saved: 536 MB", font=_font(10), fill="black")
    bands = split_lines(image)
    pieces = reading_pieces(image)
    assert len(bands) == len(pieces) == 2 and [p.line for p in pieces] == [0, 1]
    assert pieces[0].image.size == bands[0].size  # large enough already: the crop as it is
    assert pieces[0].image.tobytes() == bands[0].tobytes()
    assert pieces[1].image.width > image.width
    assert text_height(pieces[1].image) >= MIN_TEXT_HEIGHT - 2


def test_a_narrow_piece_is_widened_to_whole_patches_not_resized() -> None:
    # GIVEN a single short word on a coloured background, 61 px wide: the vision tower's resize
    # would make it 56 (squashed) or 84 px wide
    word = Image.new("RGB", (61, 30), (30, 40, 120))
    ImageDraw.Draw(word).text((4, 6), "trick", font=_font(16), fill="white")
    wide = widen_to_patches(word)
    # THEN it stands unchanged in the middle of a strip of whole patches of its background
    assert wide.size == (84, 30) and wide.width % PATCH_PAIR == 0
    left = (84 - 61) // 2
    assert wide.crop((left, 0, left + 61, 30)).tobytes() == word.tobytes()
    sides = np.asarray(wide)[:, list(range(left)) + list(range(left + 61, 84))]
    assert (sides == (30, 40, 120)).all()
    # and a tiny one is widened to two patches at least; a whole number of patches stays as it is
    assert widen_to_patches(Image.new("L", (20, 20), 255)).size == (2 * PATCH_PAIR, 20)
    exact = Image.new("RGB", (3 * PATCH_PAIR, 30), "white")
    assert widen_to_patches(exact) is exact


def test_a_wide_piece_is_left_to_the_resize() -> None:
    band = _line(14, "Download complete: 536 MB of 2.1 GB").crop((0, 0, 410, 40))
    assert band.width >= NARROW and band.width % PATCH_PAIR != 0
    assert widen_to_patches(band) is band


def test_reading_pieces_widen_a_single_word() -> None:
    image = Image.new("RGB", (47, 21), "white")
    ImageDraw.Draw(image).text((3, 4), "88620", font=_font(11), fill="black")
    (piece,) = reading_pieces(image)
    assert piece.image.width % PATCH_PAIR == 0
    assert text_height(piece.image) >= MIN_TEXT_HEIGHT - 2  # enlarged first, then widened


def _button_row(labels: list[str], size: int = 12) -> tuple[Image.Image, list[tuple[int, int]]]:
    """Push buttons side by side as a toolkit draws them (framed, rounded, 6 px apart), under a
    line of text; and each button's (left, right) columns."""
    image = Image.new("RGB", (120 * len(labels) + 20, 70), (239, 239, 239))
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), "Save changes?", font=_font(size), fill=(20, 20, 20))
    boxes = []
    for i, label in enumerate(labels):
        left = 10 + i * 120
        draw.rounded_rectangle((left, 32, left + 113, 58), radius=3, fill=(250, 250, 250),
                               outline=(140, 140, 140))  # fmt: skip
        width = draw.textlength(label, font=_font(size))
        draw.text((left + (114 - width) / 2, 38), label, font=_font(size), fill=(20, 20, 20))
        boxes.append((left, left + 114))
    return image, boxes


def test_a_row_of_buttons_is_read_button_by_button() -> None:
    # GIVEN a dialog's last band: three framed buttons, far apart
    image, boxes = _button_row(["Cancel", "OK", "Save"])
    bands = split_lines(image)
    assert len(bands) == 2
    # THEN it is cut into one piece per button, each inside its button's frame
    spans = band_pieces(bands[1])
    assert len(spans) == 3, spans
    for (left, right), (box_left, box_right) in zip(spans, boxes, strict=True):
        assert box_left < left < right < box_right
    pieces = reading_pieces(image)
    assert [p.line for p in pieces] == [0, 1, 1, 1]
    assert all(p.image.height > 0 for p in pieces)


def test_a_piece_keeps_the_stems_of_its_first_and_last_letters() -> None:
    # GIVEN a menu bar as the sample screenshot draws it: large words far apart, whose first or
    # last letters are one tall stroke (F, E, H, l) inked in more than half the band's rows, as
    # a frame's side is
    image = Image.new("RGB", (420, 29), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    words = ["File", "Edit", "Help", "Total"]
    for i, word in enumerate(words):
        draw.text((20 + 100 * i, 4), word, font=_font(20), fill=(30, 30, 30))
    ink = np.asarray(image.convert("L")) < 160
    # WHEN it is cut into pieces
    spans = band_pieces(image)
    # THEN each word is one piece holding every inked column of the word: no stem left out
    assert len(spans) == len(words), spans
    for i, (left, right) in enumerate(spans):
        word = np.flatnonzero(ink[:, 20 + 100 * i - 5 : 20 + 100 * i + 90].any(axis=0))
        assert left <= 20 + 100 * i - 5 + word[0] and 20 + 100 * i - 5 + word[-1] < right
    # AND a framed button's sides still stay out of its piece (test_a_row_of_buttons_...)


def test_each_piece_of_a_band_is_shown_at_its_bands_scale() -> None:
    # GIVEN menu bars as the sample screenshot draws them (large words far apart, little blank
    # above and below), in text large enough to read as it is and in a toolkit's small text
    for size, rows in ((22, 31), (20, 29), (11, 19)):
        image = Image.new("RGB", (420, rows), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        for i, word in enumerate(["File", "Edit", "Help", "Total"]):
            draw.text((20 + 100 * i, 4), word, font=_font(size), fill=(30, 30, 30))
        band = text_height(image)
        # WHEN OCR cuts the bar into the pieces it shows the model
        pieces = reading_pieces(image)
        assert len(pieces) == 4
        # THEN every word is scaled as its band is. Alone, "File" measures too few rows of text
        # (its stems look like a frame's sides) and was shown larger than "Help"
        scale = min(MAX_ENLARGE, MIN_TEXT_HEIGHT / band) if band < MIN_TEXT_HEIGHT else 1.0
        for piece in pieces:
            assert piece.image.height == round(rows * scale), (size, piece.image.size)


def test_a_few_words_stay_one_piece_the_band_whole() -> None:
    for size in (10, 14, 22):
        band = _line(size, "Invoice 8492 is due")
        assert band_pieces(band) == [(0, band.width)]
    blank = Image.new("RGB", (200, 30), "white")
    assert band_pieces(blank) == [(0, 200)]


def _words_at(size: int, text: str, width: int) -> tuple[Image.Image, list[tuple[int, int]]]:
    """`text` on one line `width` px wide, and each word's (left, right) inked columns."""
    font = _font(size)
    image = Image.new("RGB", (width, size * 2 + 12), (239, 239, 239))
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), text, font=font, fill=(30, 30, 30))
    spans, at = [], 0
    for word in text.split():
        start = text.index(word, at)
        at = start + len(word)
        right = draw.textbbox((8, 6), text[:at], font=font)[2]
        spans.append((8 + round(draw.textlength(text[:start], font=font)), right))
    return image, spans


@pytest.mark.parametrize("size", [10, 14, 22])
def test_a_long_line_is_cut_between_words_into_pieces_of_a_few(size: int) -> None:
    # GIVEN a line far wider than MAX_PIECE heights of its text
    text = "Could not open thesis_98.zip: file not found, try again later or ask Kofi"
    image, words = _words_at(size, text, 60 * size)
    height = text_height(image)
    pieces = band_pieces(image)
    # THEN it is cut into pieces that tile the band, each at most MAX_PIECE heights of letters
    assert len(pieces) >= 2
    assert pieces[0][0] == 0 and pieces[-1][1] == image.width
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    for left, right in pieces:
        inside = [w for w in words if left <= w[0] and w[1] <= right]
        assert inside, (left, right)
        assert inside[-1][1] - inside[0][0] <= MAX_PIECE * height + 2
    # and every cut falls in the blank between two words, never inside one
    for _, cut in pieces[:-1]:
        assert not any(left < cut < right for left, right in words), (cut, words)


def test_a_long_run_of_letters_without_spaces_is_not_cut() -> None:
    image = _line(12, "x" * 90)
    assert band_pieces(image) == [(0, image.width)]
    assert word_cuts((5, 30), np.zeros(40, dtype=bool), 10) == [(5, 30)]


def test_join_readings_joins_a_bands_pieces_with_spaces() -> None:
    lines = [0, 1, 1, 1, 2]  # each piece's band (`Piece.line`)
    texts = ["Storage", "Cancel", " ", "Save\n", ""]
    assert join_readings(lines, texts) == "Storage\nCancel Save"
    with pytest.raises(ValueError):
        join_readings(lines, texts[:2])
