"""One line of text on a plain background: the smallest screen region a user reads.

It is also where the recipe starts reading: the `ocr_word` and `ocr_line` tasks are what the
`reading` stage trains on before the teacher meets whole screens and pages. `ocr_unseen` lines
hold text that no source repeats (`unseen_text`): the sentences and words of the other tasks
come from a finite set that a model can learn by heart and recite from a line's first letters,
which these lines cannot be.
"""

from __future__ import annotations

import dataclasses
import random
import string
from pathlib import Path

from engine.ocr_lines import band_pieces, enlarge_small_text, widen_to_patches
from engine.train.synthetic.canvas import (
    Canvas,
    Rendered,
    contrasting_colours,
    line_height,
    load_font,
)
from engine.train.synthetic.glyphs import Glyph
from engine.train.text_sources import TextSource


def word_text(rng: random.Random, src: TextSource) -> str:
    """One word or number: the first thing a model learns to read (task `ocr_word`)."""
    if rng.random() < 0.8:
        return rng.choice(src.words)
    return str(rng.randint(0, 99999))


def line_text(rng: random.Random, src: TextSource) -> str:
    """A sentence, a few words, a name, a number or a date, as they appear in UIs and documents."""
    pick = rng.random()
    if pick < 0.4:
        return src.sentence(rng, max_chars=rng.randint(12, 60))
    if pick < 0.7:
        return src.phrase(rng, rng.randint(1, 5))
    if pick < 0.8:
        return src.name(rng)
    if pick < 0.9:
        return f"{src.city(rng)} {rng.randint(1, 99999)}"
    return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}"


def unseen_text(rng: random.Random, max_chars: int = 60) -> str:
    """A line of 1-6 items drawn character by character: letter strings in the shapes of words
    (lower, Capitalised, UPPER), numbers, amounts, dates, times and codes, some with punctuation.

    Nothing here comes from the text source, so a model can only read it, not recall it.
    """
    items = [_unseen_item(rng) for _ in range(rng.randint(1, 6))]
    line = items[0]
    for item in items[1:]:
        if len(line) + 1 + len(item) > max_chars:
            break
        line = f"{line} {item}"
    return line[:max_chars]


def _unseen_item(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 10)))
        case = rng.random()
        item = word.upper() if case < 0.2 else word.capitalize() if case < 0.5 else word
    elif kind < 0.65:
        item = str(rng.randint(0, 10 ** rng.randint(1, 7)))
    elif kind < 0.75:
        amount = f"{rng.randint(0, 99999):,}.{rng.randint(0, 99):02d}"
        item = rng.choice((f"${amount}", f"{amount} EUR", f"{amount} USD", amount))
    elif kind < 0.85:
        y, m, d = rng.randint(1970, 2040), rng.randint(1, 12), rng.randint(1, 28)
        item = rng.choice((f"{y}-{m:02d}-{d:02d}", f"{d}.{m}.{y}", f"{rng.randint(0, 23)}:"
                           f"{rng.randint(0, 59):02d}", f"{rng.randint(0, 100)}%"))  # fmt: skip
    else:
        letters = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(1, 3)))
        digits = "".join(rng.choices(string.digits, k=rng.randint(2, 6)))
        mixed = "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(3, 8)))
        item = rng.choice((f"{letters}-{digits}", f"#{digits}", mixed))
    mark = rng.random()
    if mark < 0.15:
        item += rng.choice(":,.;!?")
    elif mark < 0.2:
        item = f"({item})"
    return item


def render_line(
    rng: random.Random,
    text: str,
    fonts: list[Path],
    max_width: int,
    size: tuple[int, int] = (12, 24),
) -> Rendered:
    """`text` on one line in one font of `size` (low, high) pixels, cut to at most `max_width`
    pixels wide (whole words are dropped from the end; a lone word too wide loses letters).

    The picture is as wide as the text plus a margin, so its width says how long the line is.
    """
    font = load_font(rng.choice(fonts), rng.randint(*size))
    bg, fg = contrasting_colours(rng)
    pad_x, pad_y = rng.randint(2, 12), rng.randint(2, 8)
    probe = Canvas(1, 1, bg)
    room = max_width - 2 * pad_x - 1
    fitted = probe.fit(text, font, room)
    if not fitted:  # a first word wider than the region: keep what fits of it
        fitted = text.split(" ")[0]
        while len(fitted) > 1 and probe.text_width(fitted, font) > room:
            fitted = fitted[:-1]
    text = fitted
    width = min(max_width, probe.text_width(text, font) + 2 * pad_x + 1)
    c = Canvas(width, line_height(font) + 2 * pad_y, bg)
    c.write((pad_x, pad_y), text, font, fg)
    return c.result()


def one_piece(rng: random.Random, rendered: Rendered) -> Rendered:
    """One of the pieces OCR cuts the line `rendered` into (`engine.ocr_lines.band_pieces`:
    between words, at most `MAX_PIECE` heights of its text wide), drawn at random, with the
    text of the characters drawn in it; `rendered` itself when it is one piece.

    OCR never shows the embedded model a longer line (`engine.ocr_lines.word_cuts`), so it
    learns the pieces it will read: a few words, ending wherever the cut fell ("complete:",
    "rain,"), not only where sentences end.
    """
    spans = band_pieces(rendered.image)
    if len(spans) < 2 or rendered.glyphs is None:
        return rendered
    left, right = rng.choice(spans)
    text = rendered.text
    where = [i for i, ch in enumerate(text) if not ch.isspace()]  # one glyph each, in order
    inside = [(g, i) for g, i in zip(rendered.glyphs, where, strict=True) if left <= g.x < right]
    if not inside:
        return rendered
    piece_text = text[inside[0][1] : inside[-1][1] + 1]
    image = rendered.image.crop((left, 0, right, rendered.image.height))
    glyphs = tuple(Glyph(g.char, g.x - left, g.y) for g, _ in inside)
    return dataclasses.replace(rendered, image=image, lines=[piece_text], glyphs=glyphs)


def as_read(rendered: Rendered, height: int | None = None) -> Rendered:
    """`rendered` as `infinitevl ocr` and the screen capture show it to the model
    (`engine.ocr_lines.as_shown`): enlarged when the text of its line, `height` rows
    (`text_height` of the whole line, for a piece `one_piece` cut), is lower than
    `MIN_TEXT_HEIGHT`; a narrow picture widened to whole patches; the glyph centres moved with
    the picture.

    A toolkit's labels are ~12 px high; OCR enlarges them, blurred by the bicubic resampling, so
    a model that learns from such lines learns what it will be shown.
    """
    enlarged = enlarge_small_text(rendered.image, height)
    image = widen_to_patches(enlarged)
    if image is rendered.image:
        return rendered
    sx, sy = enlarged.width / rendered.image.width, enlarged.height / rendered.image.height
    left = (image.width - enlarged.width) // 2
    glyphs = rendered.glyphs
    if glyphs is not None:
        glyphs = tuple(Glyph(g.char, left + g.x * sx, g.y * sy) for g in glyphs)
    return dataclasses.replace(rendered, image=image, glyphs=glyphs)
