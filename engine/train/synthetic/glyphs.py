"""Where each drawn character sits, and the per-image-token reading targets made from it.

A model trained from scratch only on "picture -> text" learns to read slowly: the reply's loss
reaches the vision tower through the decoder's attention, which first has to find the right
image token (the 2026-12-05 runs: 200K line samples and it still did not read). The renderer
knows where every character is, so each merged image token (28 x 28 resized pixels) can be told
directly which characters it covers, left to right. A small head on the vision tower's output
learns that during training (`engine.train.forward.GlyphHead`); the decoder then only has to
copy what the tokens already say. The head is not part of the exported checkpoint.

A token's target is `SLOTS` classes: its characters in reading order, then END, then ignored
slots. Characters past `SLOTS` in one token are not supervised (the slots say nothing wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import ImageDraw, ImageFont

IGNORE = -100
SLOTS = 6  # 28 px hold ~4 characters at the smallest rendered size (12 px)
END = 0
_FIRST, _LAST = 33, 126  # printable ASCII without the space: one class each
OTHER = _LAST - _FIRST + 2  # any other visible character
NUM_CLASSES = OTHER + 1


@dataclass(frozen=True, slots=True)
class Glyph:
    """One visible character and the centre of its box, in pixels of the rendered picture."""

    char: str
    x: float
    y: float


def glyph_class(char: str) -> int:
    """The class of a visible character: 1..94 for ASCII '!'..'~', OTHER for the rest."""
    code = ord(char)
    return code - _FIRST + 1 if _FIRST <= code <= _LAST else OTHER


def line_glyphs(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.FreeTypeFont
) -> list[Glyph]:
    """The visible characters of `text` drawn at `xy` (top-left) in `font`, with their centres.

    Horizontal centres come from each character's advance, scaled so that they add up to the
    drawn line's length (kerning spread evenly: one measurement per character, not per prefix);
    the vertical centre is the middle of the font's ascent and descent.
    """
    if not text:
        return []
    ascent, descent = font.getmetrics()
    y = xy[1] + (ascent + descent) / 2
    advances = [font.getlength(ch) for ch in text]
    total = sum(advances)
    scale = draw.textlength(text, font=font) / total if total > 0 else 1.0
    out: list[Glyph] = []
    left = float(xy[0])
    for ch, advance in zip(text, advances, strict=True):
        right = left + advance * scale
        if not ch.isspace():
            out.append(Glyph(ch, (left + right) / 2, y))
        left = right
    return out


def glyph_targets(
    glyphs: list[Glyph] | tuple[Glyph, ...],
    image_size: tuple[int, int],
    grid_hw: tuple[int, int],
    patch_size: int,
    merge_size: int,
) -> torch.Tensor:
    """[tokens, SLOTS] int64 targets of one image's merged tokens, in the vision tower's order.

    Args:
        glyphs: every visible character of the picture (a token without one reads END).
        image_size: (width, height) of the picture the glyphs were measured on.
        grid_hw: (h, w) of its patch grid after resizing (image_grid_thw without t).
        patch_size, merge_size: as the image processor's; a token spans both, squared.
    """
    h, w = grid_hw
    rows, cols = h // merge_size, w // merge_size
    cell = patch_size * merge_size
    sx, sy = w * patch_size / image_size[0], h * patch_size / image_size[1]
    per_token: list[list[tuple[float, float, int]]] = [[] for _ in range(rows * cols)]
    for g in glyphs:
        c = min(cols - 1, max(0, int(g.x * sx // cell)))
        r = min(rows - 1, max(0, int(g.y * sy // cell)))
        # reading order inside a token: line by line (a line's glyphs share y), left to right
        per_token[r * cols + c].append((g.y, g.x, glyph_class(g.char)))
    table: list[list[int]] = []
    for chars in per_token:
        chars.sort()
        classes = [k for _, _, k in chars[:SLOTS]]
        if len(classes) < SLOTS:
            classes.append(END)
        table.append(classes + [IGNORE] * (SLOTS - len(classes)))
    # one tensor from the whole table, not one per token: a page has hundreds of tokens
    return torch.tensor(table, dtype=torch.long).view(rows * cols, SLOTS)
