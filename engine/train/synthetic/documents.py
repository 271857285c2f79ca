"""Document-like pages: prose, code listings, tables and shop receipts."""

from __future__ import annotations

import random
from pathlib import Path

from engine.train.fonts import is_monospace
from engine.train.synthetic.canvas import (
    Canvas,
    Rendered,
    contrasting_colours,
    line_height,
    load_font,
)
from engine.train.text_sources import TextSource


def render_page(
    rng: random.Random,
    src: TextSource,
    fonts: list[Path],
    size: tuple[int, int],
    header: str | None = None,
    fact: tuple[str, str] | None = None,
) -> Rendered:
    """A page of prose: optional header line, a title, wrapped paragraphs.

    Args:
        header: a first line such as "Page 3" (multi-page documents).
        fact: (name, value) written as a line "name: value" at a random place on the page.
    Returns:
        The page with facts `title` (and `fact` when given).
    """
    width, height = size
    bg, fg = contrasting_colours(rng, dark_mode=rng.random() < 0.1)
    c = Canvas(width, height, bg)
    face = rng.choice(fonts)
    font = load_font(face, rng.randint(13, 18))
    title_font = load_font(face, font.size + rng.randint(2, 6))
    margin = rng.randint(8, 24)
    y = margin
    if header:
        c.write((margin, y), header, font, fg)
        y += line_height(font)
    title = c.fit(src.phrase(rng, rng.randint(2, 5)), title_font, width - margin - 1)
    c.write((margin, y), title, title_font, fg)
    y += line_height(title_font) + 4
    fact_at = rng.randint(0, 3) if fact else -1
    para = 0
    while c.fits(y, font):
        if para == fact_at and fact:
            c.write((margin, y), f"{fact[0]}: {fact[1]}", font, fg)
            y += line_height(font)
            fact_at = -1
        for ln in c.wrap(src.sentence(rng, 160), font, width - 2 * margin):
            if not c.fits(y, font):
                break
            c.write((margin, y), ln, font, fg)
            y += line_height(font)
        y += rng.randint(0, line_height(font) // 2)
        para += 1
    if fact and fact_at >= 0:
        # the page filled before the fact's turn: overwrite the last line with it
        c.lines.pop()
        y -= line_height(font)
        c.draw.rectangle((0, y, width, height), fill=bg)
        c.write((margin, y), f"{fact[0]}: {fact[1]}", font, fg)
    facts = {"title": title}
    if fact:
        facts[fact[0]] = fact[1]
    return c.result(**facts)


def render_code(
    rng: random.Random, src: TextSource, fonts: list[Path], size: tuple[int, int]
) -> Rendered:
    """A code listing in a monospace face on an editor-like background."""
    width, height = size
    mono = [f for f in fonts if is_monospace(f)] or fonts
    bg, fg = contrasting_colours(rng, dark_mode=rng.random() < 0.5)
    c = Canvas(width, height, bg)
    font = load_font(rng.choice(mono), rng.randint(12, 17))
    y = margin = rng.randint(6, 14)
    # another run of source lines when none of one run fits the width
    for _ in range(20):
        lines = src.code(rng, 40)
        indent = min((len(ln) - len(ln.lstrip()) for ln in lines), default=0)
        for ln in lines:
            ln = ln[indent:]
            if not c.fits(y, font):
                break
            if c.text_width(ln, font) > width - 2 * margin:
                continue
            c.write((margin, y), ln, font, fg)
            y += line_height(font)
        if c.lines:
            break
    return c.result()


def render_table(
    rng: random.Random, src: TextSource, fonts: list[Path], size: tuple[int, int]
) -> Rendered:
    """A grid table: a header row and rows of names, cities and numbers (cells joined by spaces)."""
    width, height = size
    bg, fg = contrasting_colours(rng, dark_mode=False)
    c = Canvas(width, height, bg)
    font = load_font(rng.choice(fonts), rng.randint(12, 16))
    lh = line_height(font) + 6
    header = ["Name", "City", rng.choice(["Score", "Amount", "Qty", "Votes"])]
    cols = [8, int(width * 0.45), int(width * 0.72)]
    y = 6
    rows = [header]
    while y + lh * (len(rows) + 1) <= height - 4:
        rows.append([src.name(rng), src.city(rng), str(rng.randint(0, 9999))])
    for i, row in enumerate(rows):
        c.draw.line((0, y - 3, width, y - 3), fill=fg)
        row = [t if c.text_width(t, font) < cols[1] - 12 else t.split()[0] for t in row]
        c.write_row(y, list(zip(cols, row, strict=True)), font, fg)
        if i == 0:
            c.draw.line((0, y + lh - 4, width, y + lh - 4), fill=fg, width=2)
        y += lh
    return c.result()


def render_receipt(
    rng: random.Random, src: TextSource, fonts: list[Path], size: tuple[int, int]
) -> Rendered:
    """A shop receipt: shop name, items with right-aligned prices, and a total (fact `total`)."""
    width, height = size
    mono = [f for f in fonts if is_monospace(f)] or fonts
    c = Canvas(width, height, (rng.randint(235, 255),) * 3)
    fg = (rng.randint(0, 60),) * 3
    font = load_font(rng.choice(mono if rng.random() < 0.7 else fonts), rng.randint(12, 16))
    lh = line_height(font)
    y = margin = 8
    c.write((margin, y), src.phrase(rng, 2).upper(), font, fg)
    y += lh + 4
    total_cents = 0
    while y + 3 * lh <= height - margin:
        item = src.phrase(rng, rng.randint(1, 2))
        cents = rng.randint(50, 9999)
        total_cents += cents
        price = f"{cents // 100}.{cents % 100:02d}"
        x_price = width - margin - c.text_width(price, font)
        if c.text_width(item, font) > x_price - margin - 8:
            item = item.split()[0]
        c.write_row(y, [(margin, item), (x_price, price)], font, fg)
        y += lh
    total = f"{total_cents // 100}.{total_cents % 100:02d}"
    c.draw.line((margin, y + 2, width - margin, y + 2), fill=fg)
    y += 6
    c.write_row(
        y, [(margin, "TOTAL"), (width - margin - c.text_width(total, font), total)], font, fg
    )
    return c.result(total=total)
