"""Draw resources/sample.png: a screenshot-like image with readable text for demos and tests.

A small application window (title bar, menu, a paragraph, a table, a button) in DejaVu Sans, so a
model that reads screens has something definite to read. Deterministic: the same PIL version
draws the same bytes. Run: ``python resources/make_sample.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
SIZE = (896, 560)  # 32 x 20 patches of 28 px: no resize needed at the default parameters
TITLE = "Quarterly Report - Notes"
MENU = ("File", "Edit", "View", "Help")
PARAGRAPH = (
    "Sales grew 12% in the third quarter.",
    "The new office in Lyon opens on 3 March 2025.",
    "Meeting with the design team: Tuesday, 10:30.",
)
TABLE = (
    ("Region", "Q2", "Q3"),
    ("North", "1,240", "1,395"),
    ("South", "980", "1,102"),
    ("Total", "2,220", "2,497"),
)
BUTTON = "Send report"


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install fonts-dejavu-core")
    return ImageFont.truetype(str(path), size)


def draw_sample() -> Image.Image:
    """The sample screenshot, RGB, ``SIZE`` pixels."""
    regular, bold = _font("DejaVuSans.ttf", 22), _font("DejaVuSans-Bold.ttf", 24)
    im = Image.new("RGB", SIZE, (236, 238, 242))
    d = ImageDraw.Draw(im)
    # window frame and title bar
    d.rectangle((24, 20, 872, 540), fill=(255, 255, 255), outline=(150, 155, 165), width=2)
    d.rectangle((25, 21, 871, 64), fill=(52, 84, 140))
    d.text((44, 30), TITLE, font=bold, fill=(255, 255, 255))
    for i, color in enumerate(((230, 90, 80), (240, 190, 60), (90, 190, 100))):
        d.ellipse((800 + 22 * i, 35, 814 + 22 * i, 49), fill=color)
    # menu bar
    d.rectangle((26, 65, 870, 100), fill=(244, 245, 248))
    x = 44
    for item in MENU:
        d.text((x, 70), item, font=regular, fill=(30, 30, 30))
        x += int(d.textlength(item, font=regular)) + 36
    # paragraph
    for i, line in enumerate(PARAGRAPH):
        d.text((52, 124 + 36 * i), line, font=regular, fill=(20, 20, 20))
    # table
    top, cols = 250, (52, 300, 480)
    d.rectangle((44, top - 8, 640, top + 36 * len(TABLE)), outline=(180, 185, 195), width=1)
    for r, row in enumerate(TABLE):
        y = top + 36 * r
        if r:
            d.line((44, y - 6, 640, y - 6), fill=(210, 213, 220))
        for c, cell in enumerate(row):
            d.text((cols[c], y), cell, font=bold if r in (0, len(TABLE) - 1) else regular, fill=0)
    # button
    d.rounded_rectangle((640, 470, 850, 520), radius=10, fill=(52, 120, 210))
    d.text((668, 481), BUTTON, font=bold, fill=(255, 255, 255))
    return im


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sample.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draw_sample().save(args.out, optimize=True)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
