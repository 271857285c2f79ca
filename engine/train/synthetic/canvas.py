"""A PIL canvas that writes lines of text and remembers them in reading order."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import cast

from PIL import Image, ImageDraw, ImageFont

from engine.train.synthetic.glyphs import Glyph, line_glyphs

RGB = tuple[int, int, int]


@dataclass(slots=True)
class Rendered:
    """One rendered image and what it says.

    Attributes:
        image: RGB picture.
        lines: the text in reading order, one entry per visual line.
        facts: named values a question may ask about (title, total, ...).
        glyphs: every visible character drawn, with its centre (see synthetic.glyphs), or
            None where the renderer does not record them.
    """

    image: Image.Image
    lines: list[str]
    facts: dict[str, str] = field(default_factory=dict)
    glyphs: tuple[Glyph, ...] | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@lru_cache(maxsize=512)
def load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType face at a pixel size."""
    return ImageFont.truetype(str(path), size)


def luminance(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def contrasting_colours(rng: random.Random, dark_mode: bool | None = None) -> tuple[RGB, RGB]:
    """(background, foreground) with a luminance gap readable by eye (>= 110 of 255)."""
    if dark_mode is None:
        dark_mode = rng.random() < 0.3
    while True:
        if dark_mode:
            bg = cast(RGB, tuple(rng.randint(0, 70) for _ in range(3)))
            fg = cast(RGB, tuple(rng.randint(170, 255) for _ in range(3)))
        else:
            bg = cast(RGB, tuple(rng.randint(200, 255) for _ in range(3)))
            fg = cast(RGB, tuple(rng.randint(0, 90) for _ in range(3)))
        if abs(luminance(bg) - luminance(fg)) >= 110:
            return bg, fg


class Canvas:
    """Draws text on an image and records each visual line for the ground truth, and where each
    character went (draw all text through `write`, `write_row` or `draw_text`, so none is
    missing from `glyphs`)."""

    def __init__(self, width: int, height: int, background: RGB) -> None:
        self.image = Image.new("RGB", (width, height), background)
        self.draw = ImageDraw.Draw(self.image)
        self.lines: list[str] = []
        self.glyphs: list[Glyph] = []

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def text_width(self, text: str, font: ImageFont.FreeTypeFont) -> int:
        return int(self.draw.textlength(text, font=font))

    def fits(self, y: int, font: ImageFont.FreeTypeFont) -> bool:
        return y + line_height(font) <= self.size[1]

    def fit(self, text: str, font: ImageFont.FreeTypeFont, max_width: int) -> str:
        """`text` without the trailing words that would pass `max_width` pixels ("" if none fit)."""
        words = text.split(" ")
        while words and self.text_width(" ".join(words), font) > max_width:
            words.pop()
        return " ".join(words)

    def write(self, xy: tuple[int, int], text: str, font: ImageFont.FreeTypeFont, fill: RGB) -> int:
        """Draw one line at xy (top-left) cut to the canvas width, record it, return its right end.

        Text that would run off the picture is dropped, so the ground truth is what is visible.
        """
        text = self.fit(text, font, self.size[0] - xy[0] - 1)
        if not text.strip():
            return xy[0]
        self.draw_text(xy, text, font, fill)
        self.lines.append(text)
        return xy[0] + self.text_width(text, font)

    def write_row(
        self, y: int, cells: list[tuple[int, str]], font: ImageFont.FreeTypeFont, fill: RGB
    ) -> None:
        """Draw several pieces on one visual line; they are recorded as one line, left to right."""
        for x, t in cells:
            self.draw_text((x, y), t, font, fill)
        self.lines.append(" ".join(t for _, t in sorted(cells) if t))

    def draw_text(
        self, xy: tuple[int, int], text: str, font: ImageFont.FreeTypeFont, fill: RGB
    ) -> None:
        """Draw `text` at xy (top-left) and record its characters' positions, not a line."""
        self.draw.text(xy, text, font=font, fill=fill)
        self.glyphs += line_glyphs(self.draw, xy, text, font)

    def wrap(self, text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
        """Greedy word wrap to `max_width` pixels (a word wider than that stands alone)."""
        out: list[str] = []
        cur = ""
        for w in text.split():
            trial = f"{cur} {w}" if cur else w
            if cur and self.text_width(trial, font) > max_width:
                out.append(cur)
                cur = w
            else:
                cur = trial
        if cur:
            out.append(cur)
        return out

    def result(self, **facts: str) -> Rendered:
        return Rendered(self.image, list(self.lines), dict(facts), tuple(self.glyphs))


def line_height(font: ImageFont.FreeTypeFont) -> int:
    """Pixels from one baseline to the next at single spacing."""
    ascent, descent = font.getmetrics()
    # load_font opens faces at an int size; Pillow's stubs type FreeTypeFont.size as float
    return ascent + descent + max(2, cast(int, font.size) // 5)
