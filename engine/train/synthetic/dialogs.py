"""Dialogs in a desktop toolkit's plain style: what a screen region mostly shows on Linux.

`screens.render_screen` draws windows in random colours and fonts of 13-20 px with text from the
standard library's docstrings. Real dialogs differ: a grey (or dark) background, one sans-serif
face of 11-17 px, a bold title, everyday messages with names, files, numbers and times, check
boxes, a text field and a row of framed buttons. The embedded model read such dialogs, drawn by
real Qt widgets, far worse than Tesseract (`benchmarks/eval_default_model.py`'s "Qt widget
dialogs" row, twelfth session) while it read the generator's own screens better: this renderer
is that missing kind. It draws with PIL only (no toolkit), and its messages come from templates
of its own (`MESSAGES`), not those of the evaluation's dialogs (`benchmarks/qt_screens.py`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import ImageFont

from engine.train.synthetic.canvas import RGB, Canvas, Rendered, line_height, load_font
from engine.train.synthetic.lines import unseen_text
from engine.train.text_sources import TextSource

TITLES = ("Confirm", "Properties", "Preferences", "Account", "Transfer", "Sharing", "Security",
          "Warning", "Information", "Install", "Display", "Sound", "Accounts", "Export",
          "Import", "About")  # fmt: skip
BUTTONS = ("OK", "Cancel", "Yes", "No", "Apply", "Discard", "Keep", "Skip", "Next", "Back",
           "Finish", "Install", "Remove", "Rename", "Replace", "Connect", "Send", "Allow",
           "Deny", "Print", "Browse...", "Details", "Restart now", "Not now")  # fmt: skip
CHECKS = ("Always use this app", "Show hidden files", "Check for updates", "Enable notifications",
          "Apply to all items", "Open folder when done", "Use dark theme")  # fmt: skip
EXTENSIONS = ("doc", "pdf", "jpg", "mp3", "tar.gz", "ods", "md", "py", "iso", "svg")
UNITS = ("KB", "MB", "GB")


def _word(rng: random.Random, src: TextSource) -> str:
    return src.phrase(rng, 1).strip(".,;:()'\"").lower() or "file"


def file_name(rng: random.Random, src: TextSource) -> str:
    """A file name: a word, a number and an extension."""
    sep = rng.choice(["_", "-", ""])
    return f"{_word(rng, src)}{sep}{rng.randint(1, 2030)}.{rng.choice(EXTENSIONS)}"


def _amount(rng: random.Random) -> str:
    return (
        f"{rng.randint(1, 999)}{rng.choice(['', '.' + str(rng.randint(0, 9))])} {rng.choice(UNITS)}"
    )


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2000, 2039)}"


MESSAGES: tuple[Callable[[random.Random, TextSource], str], ...] = (
    lambda r, s: f"Are you sure you want to delete {file_name(r, s)}?",
    lambda r, s: f"{r.randint(2, 500)} items selected ({_amount(r)})",
    lambda r, s: f"Copying {file_name(r, s)} ({r.randint(1, 99)}%)",
    lambda r, s: f"Welcome back, {s.name(r)}",
    lambda r, s: f"Your free trial ends on {_date(r)}",
    lambda r, s: f"Connection lost. Retrying in {r.randint(2, 60)} s",
    lambda r, s: f"Send {file_name(r, s)} to {s.name(r)}?",
    lambda r, s: "Your changes have been saved",
    lambda r, s: f"Unable to reach server {_word(r, s)}.example.org",
    lambda r, s: f"{r.randint(2, 30)} networks found near {s.city(r)}",
    lambda r, s: f"Estimated time left: {r.randint(1, 59)} min {r.randint(0, 59)} s",
    lambda r, s: f"{s.name(r)} invited you to {_word(r, s)}",
    lambda r, s: f"Replace the existing {file_name(r, s)}?",
    lambda r, s: f"Used {_amount(r)} of {r.randint(5, 2000)} GB",
    lambda r, s: f"Brightness {r.randint(0, 100)}%",
    lambda r, s: f"Next alarm: {r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
    lambda r, s: f"Payment of EUR {r.randint(1, 9999)}.{r.randint(0, 99):02d} received",
    lambda r, s: f"Restart to finish installing {r.randint(1, 40)} updates",
    lambda r, s: f"Location: {s.city(r)}",
    lambda r, s: f"Folder: /home/{s.name(r).split()[0].lower()}/{_word(r, s)}",
    lambda r, s: unseen_text(r, max_chars=40),
    lambda r, s: s.sentence(r, max_chars=60),
)


def ui_message(rng: random.Random, src: TextSource) -> str:
    """One line a dialog might say."""
    return rng.choice(MESSAGES)(rng, src)


def _faces(fonts: list[Path]) -> tuple[list[Path], list[Path]]:
    """(regular sans faces, bold sans faces) among `fonts`, each falling back to all of them."""
    sans = [f for f in fonts if "Sans" in f.name and "Mono" not in f.name]
    upright = [f for f in sans if not any(s in f.name for s in ("Oblique", "Italic"))]
    regular = [f for f in upright if "Bold" not in f.name] or fonts
    bold = [f for f in upright if "Bold" in f.name] or regular
    return regular, bold


def _theme(rng: random.Random) -> tuple[RGB, RGB, RGB, RGB]:
    """(window background, text, frame, field/button face) of a light or dark theme."""
    if rng.random() < 0.75:
        bg = rng.randint(225, 248)
        return (bg, bg, bg + rng.randint(-3, 3)), (rng.randint(0, 40),) * 3, (
            rng.randint(120, 190),) * 3, (min(255, bg + rng.randint(4, 20)),) * 3  # fmt: skip
    bg = rng.randint(30, 60)
    return (bg,) * 3, (rng.randint(215, 245),) * 3, (rng.randint(80, 120),) * 3, (bg + 15,) * 3


def render_dialog(rng: random.Random, src: TextSource, fonts: list[Path], width: int) -> Rendered:
    """A dialog `width` pixels wide (its height follows from its rows).

    Returns:
        The picture, its lines top to bottom (a button row's labels joined by spaces), and the
        fact `title`.
    """
    regular, bold = _faces(fonts)
    size = rng.randint(11, 17)
    font = load_font(rng.choice(regular), size)
    title_font = load_font(rng.choice(bold), size + rng.choice([0, 0, 1, 2]))
    bg, fg, frame, face = _theme(rng)
    margin, spacing = rng.randint(8, 14), rng.randint(4, 12)
    lh = line_height(font)
    c = Canvas(width, 24 * lh + 2 * margin, bg)  # cropped to the rows drawn, below
    y = margin
    title = c.fit(rng.choice(TITLES) if rng.random() < 0.7 else ui_message(rng, src), title_font,
                  width - 2 * margin)  # fmt: skip
    c.write((margin, y), title, title_font, fg)
    y += line_height(title_font) + spacing
    for _ in range(rng.randint(1, 3)):
        for text in c.wrap(ui_message(rng, src), font, width - 2 * margin)[:2]:
            c.write((margin, y), text, font, fg)
            y += lh
        y += spacing
    if rng.random() < 0.4:
        y = _check_box(c, rng, (margin, y), font, fg, frame, face) + spacing
    if rng.random() < 0.4:
        y = _field(c, file_name(rng, src), (margin, y, width - margin), font, fg, frame) + spacing
    y = _buttons(c, rng, (margin, y, width - margin), font, fg, frame, face)
    c.image = c.image.crop((0, 0, width, y + margin))
    c.lines = [ln for ln in c.lines if ln]
    return c.result(title=title)


def _check_box(
    c: Canvas, rng: random.Random, at: tuple[int, int], font: ImageFont.FreeTypeFont,
    fg: RGB, frame: RGB, face: RGB,
) -> int:  # fmt: skip
    """A check box and its label at `at`; returns the row's bottom."""
    x, y = at
    lh = line_height(font)
    box = max(10, lh - 6)
    top = y + (lh - box) // 2
    c.draw.rectangle((x, top, x + box, top + box), fill=face, outline=frame)
    if rng.random() < 0.5:  # checked
        c.draw.line((x + 2, top + box // 2, x + box // 2 - 1, top + box - 3), fill=fg, width=2)
        c.draw.line((x + box // 2 - 1, top + box - 3, x + box - 2, top + 2), fill=fg, width=2)
    c.write((x + box + 6, y), rng.choice(CHECKS), font, fg)
    return y + lh


def _field(
    c: Canvas, text: str, span: tuple[int, int, int], font: ImageFont.FreeTypeFont,
    fg: RGB, frame: RGB,
) -> int:  # fmt: skip
    """A one-line text field across `span` (left, top, right) holding `text`; returns its bottom."""
    left, top, right = span
    lh = line_height(font)
    white = (255, 255, 255) if fg[0] < 128 else (20, 20, 20)
    c.draw.rectangle((left, top, right, top + lh + 6), fill=white, outline=frame)
    c.write((left + 4, top + 3), text, font, fg)
    return top + lh + 6


def _buttons(
    c: Canvas, rng: random.Random, span: tuple[int, int, int], font: ImageFont.FreeTypeFont,
    fg: RGB, frame: RGB, face: RGB,
) -> int:  # fmt: skip
    """A row of framed buttons across `span` (left, top, right): equal widths filling it, or
    natural widths at the right; returns the row's bottom."""
    left, top, right = span
    lh = line_height(font)
    labels = rng.sample(BUTTONS, rng.randint(1, 3))
    gap = rng.randint(6, 12)
    natural = [c.text_width(t, font) + 2 * rng.randint(10, 18) for t in labels]
    if rng.random() < 0.5 or sum(natural) + gap * len(labels) > right - left:
        each = (right - left - gap * (len(labels) - 1)) // len(labels)
        widths, x = [each] * len(labels), left
    else:
        widths, x = natural, right - sum(natural) - gap * (len(labels) - 1)
    cells = []
    for label, w in zip(labels, widths, strict=True):
        text = c.fit(label, font, w - 4)
        c.draw.rounded_rectangle((x, top, x + w, top + lh + 8), radius=3, fill=face, outline=frame)
        if text:
            cells.append((x + (w - c.text_width(text, font)) // 2, text))
        x += w + gap
    c.write_row(top + 4, cells, font, fg)
    return top + lh + 8
