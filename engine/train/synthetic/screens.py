"""UI-like screen regions: a window with a title bar, menu, labels, buttons, fields, status bar."""

from __future__ import annotations

import random
from pathlib import Path

from engine.train.synthetic.canvas import (
    Canvas,
    Rendered,
    contrasting_colours,
    line_height,
    load_font,
)
from engine.train.text_sources import TextSource

_BUTTONS = (
    "OK",
    "Cancel",
    "Apply",
    "Save",
    "Open",
    "Close",
    "Send",
    "Next",
    "Back",
    "Retry",
    "Delete",
    "Search",
    "Upload",
    "Share",
    "Export",
    "Settings",
    "Help",
    "Sign in",
)
_MENUS = ("File", "Edit", "View", "Tools", "Window", "Help", "Go", "Run", "Insert", "Format")


def render_screen(
    rng: random.Random, src: TextSource, fonts: list[Path], size: tuple[int, int]
) -> Rendered:
    """A screen region of `size` (width, height) pixels holding a small application window.

    Returns:
        The picture, its lines top to bottom (pieces of one row joined by spaces), and the fact
        `title` (the window title).
    """
    width, height = size
    bg, fg = contrasting_colours(rng)
    c = Canvas(width, height, bg)
    font = load_font(rng.choice(fonts), rng.randint(13, 20))
    lh = line_height(font)
    pad = rng.randint(4, 12)
    title = c.fit(src.phrase(rng, rng.randint(1, 4)), font, width - pad - 1)
    # title bar in an accent colour with the title in a contrasting shade
    bar_bg, bar_fg = contrasting_colours(rng)
    c.draw.rectangle((0, 0, width, lh + 2 * pad // 2), fill=bar_bg)
    c.write((pad, pad // 2), title, font, bar_fg)
    y = lh + pad
    if rng.random() < 0.5 and c.fits(y, font):
        cells, x = [], pad
        for m in rng.sample(_MENUS, rng.randint(2, 6)):
            if x + c.text_width(m, font) > width - pad:
                break
            cells.append((x, m))
            x += c.text_width(m, font) + rng.randint(12, 24)
        c.write_row(y, cells, font, fg)
        y += lh + pad // 2
    while c.fits(y + lh + pad, font):
        kind = rng.random()
        if kind < 0.45:
            text = src.sentence(rng, max_chars=80)
            for ln in c.wrap(text, font, width - 2 * pad)[:2]:
                if not c.fits(y, font):
                    break
                c.write((pad, y), ln, font, fg)
                y += lh
        elif kind < 0.7:
            label = f"{src.phrase(rng, rng.randint(1, 2))}:"
            value = rng.choice(
                [
                    src.name(rng),
                    src.city(rng),
                    str(rng.randint(0, 99999)),
                    f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}",
                ]
            )
            x_val = pad + c.text_width(label, font) + rng.randint(10, 30)
            if x_val + c.text_width(value, font) + 8 > width - pad:
                continue
            c.draw.rectangle(
                (
                    x_val - 4,
                    y - 2,
                    x_val + c.text_width(value, font) + 8,
                    y + lh - 2,
                ),
                outline=fg,
            )
            c.write_row(y, [(pad, label), (x_val, value)], font, fg)
            y += lh + 4
        else:
            cells, x = [], pad
            for b in rng.sample(_BUTTONS, rng.randint(1, 4)):
                w = c.text_width(b, font) + 16
                if x + w > width - pad:
                    break
                btn_bg, btn_fg = contrasting_colours(rng)
                c.draw.rounded_rectangle(
                    (x, y - 3, x + w, y + lh), radius=4, fill=btn_bg, outline=fg
                )
                c.draw_text((x + 8, y), b, font, btn_fg)
                cells.append((x + 8, b))
                x += w + rng.randint(8, 20)
            c.lines.append(" ".join(t for _, t in cells))
            y += lh + 6
        y += rng.randint(2, pad)
    c.lines = [ln for ln in c.lines if ln]
    return c.result(title=title)
