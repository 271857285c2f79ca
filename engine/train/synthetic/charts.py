"""Simple bar charts with their values printed on the bars."""

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
from engine.train.text_sources import CITIES


def render_bar_chart(rng: random.Random, fonts: list[Path], size: tuple[int, int]) -> Rendered:
    """A bar chart of 3-6 labelled bars; lines are the title then "label value" per bar.

    Returns:
        Facts: `largest` (label of the tallest bar) and `value:<label>` for every bar.
    """
    width, height = size
    bg, fg = contrasting_colours(rng, dark_mode=False)
    c = Canvas(width, height, bg)
    font = load_font(rng.choice(fonts), rng.randint(12, 15))
    lh = line_height(font)
    labels = rng.sample(CITIES, rng.randint(3, 6))
    values = rng.sample(range(5, 100), len(labels))
    title = rng.choice(["Sales", "Visitors", "Rainfall", "Orders", "Downloads"]) + " by city"
    c.write((8, 4), title, font, fg)
    top, bottom = 4 + 2 * lh, height - lh - 6
    slot = (width - 16) // len(labels)
    facts = {"largest": labels[values.index(max(values))]}
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x0 = 8 + i * slot + slot // 6
        x1 = 8 + (i + 1) * slot - slot // 6
        y0 = bottom - int((bottom - top) * v / 100)
        colour = tuple(rng.randint(40, 200) for _ in range(3))
        c.draw.rectangle((x0, y0, x1, bottom), fill=colour)
        c.draw_text((x0, y0 - lh), str(v), font, fg)
        c.draw_text((x0, bottom + 3), label, font, fg)
        c.lines.append(f"{label} {v}")
        facts[f"value:{label}"] = str(v)
    return c.result(**facts)
