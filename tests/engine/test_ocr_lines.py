"""engine/ocr_lines.py: a screen region or page cut into its bands of text lines, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from engine.ocr_lines import line_bands, split_lines

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
