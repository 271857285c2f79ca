"""Held-out screens drawn by real Qt widgets, for OCR evaluation (not training data).

The training generator draws its own screens (`engine.train.synthetic.screens`): the embedded
model and Tesseract are also scored on what a desktop really shows, the widgets of a toolkit in
its default style and font. Each screen is a dialog: a bold title, one to three messages, maybe a
check box and a filled-in text field, and a row of buttons, rendered offscreen by PySide6
(``QWidget.grab``, no window shown). The messages are everyday interface sentences with names,
files, numbers and times drawn from a seeded generator, so no training text repeats them.

The truth of a screen is its texts top to bottom, the buttons of a row left to right.

`widget_screen(rng, dark=True)` draws the same dialog in a dark theme (`DARK_PALETTE`: light
text on dark grey, as many Linux desktops show it).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from io import BytesIO
from typing import Any

from PIL import Image

NAMES = ["Anna", "Peter", "Maria", "Jonas", "Lena", "Tomasz", "Sofia", "Omar", "Yuki", "Kofi"]
FILES = ["report", "budget", "notes", "invoice", "thesis", "photo", "backup", "slides", "draft"]
EXTS = ["docx", "xlsx", "txt", "pdf", "png", "odt", "csv", "zip"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "October"]
TITLES = ["Save changes", "Settings", "Update", "Sign in", "Downloads", "Printing", "Network",
          "Calendar", "Storage", "Messages", "Backup", "Error"]  # fmt: skip
BUTTONS = ["Cancel", "Save", "OK", "Retry", "Apply", "Close", "Help", "Don't Save", "Continue",
           "Later", "Open", "Delete"]  # fmt: skip
CHECKS = ["Remember my choice", "Do not show again", "Start at login", "Send anonymous reports",
          "Keep a copy on this computer"]  # fmt: skip


def _file(r: random.Random) -> str:
    return f"{r.choice(FILES)}_{r.randint(1, 99)}.{r.choice(EXTS)}"


def _time(r: random.Random) -> str:
    return f"{r.randint(7, 20)}:{r.choice(['00', '15', '30', '45'])}"


MESSAGES: list[Callable[[random.Random], str]] = [
    lambda r: f"Do you want to save changes to {_file(r)}?",
    lambda r: f"Your password expires in {r.randint(2, 29)} days",
    lambda r: f"Battery low ({r.randint(3, 19)}%)",
    lambda r: f"Download complete: {r.randint(2, 950)} MB",
    lambda r: f"Meeting with {r.choice(NAMES)} at {_time(r)} tomorrow",
    lambda r: f"Invoice {r.randint(1000, 9999)} is due on {r.randint(1, 28)} {r.choice(MONTHS)}",
    lambda r: f"Total: ${r.randint(2, 400)}.{r.randint(0, 99):02d}",
    lambda r: f"Update available: version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
    lambda r: f"{r.randint(2, 40)} new messages from {r.choice(NAMES)}",
    lambda r: f"Disk space: {r.randint(1, 500)}.{r.randint(0, 9)} GB free",
    lambda r: f"Printing page {r.randint(1, 9)} of {r.randint(10, 40)}",
    lambda r: f"Last saved {r.randint(2, 59)} minutes ago",
    lambda r: f"Could not open {_file(r)}: file not found",
    lambda r: f"Order #{r.randint(10000, 99999)} has shipped",
    lambda r: f"Syncing {r.randint(1, 99)} of {r.randint(100, 900)} files",
    lambda r: f"Temperature: {r.randint(-5, 35)} C, light rain",
    lambda r: f"Connected to {r.choice(NAMES)}'s phone",
    lambda r: f"{r.choice(NAMES)} shared {_file(r)} with you",
]


# a dark theme's colours (QPalette role -> colour), after common dark desktop themes
DARK_PALETTE = {
    "Window": "#353535",
    "WindowText": "#e6e6e6",
    "Base": "#262626",
    "Text": "#e6e6e6",
    "Button": "#454545",
    "ButtonText": "#e6e6e6",
}


def _dark_palette() -> Any:
    """A QPalette of `DARK_PALETTE`'s colours."""
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    for role, colour in DARK_PALETTE.items():
        palette.setColor(getattr(QPalette.ColorRole, role), QColor(colour))
    return palette


def _app() -> Any:
    """The process's QApplication (a new offscreen one when there is none)."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    # offscreen: nothing is shown, and no display is needed
    return app if app is not None else QApplication(["qt_screens", "-platform", "offscreen"])


def widget_screen(rng: random.Random, dark: bool = False) -> tuple[Image.Image, str]:
    """One dialog drawn by Qt widgets, and its text top to bottom; in a dark theme when `dark`
    (the same dialog for the same `rng` state either way)."""
    from PySide6.QtCore import QBuffer, QIODevice
    from PySide6.QtGui import QFont
    from PySide6.QtWidgets import (
        QCheckBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QPushButton,
        QVBoxLayout,
        QWidget,
    )

    _app()
    dialog = QWidget()
    if dark:
        dialog.setPalette(_dark_palette())
    font = QFont(dialog.font())
    font.setPointSize(rng.choice([9, 10, 11, 12]))
    dialog.setFont(font)
    layout = QVBoxLayout(dialog)
    lines = [rng.choice(TITLES)]
    title = QLabel(lines[0])
    bold = QFont(font)
    bold.setBold(True)
    title.setFont(bold)
    layout.addWidget(title)
    for _ in range(rng.randint(1, 3)):
        lines.append(rng.choice(MESSAGES)(rng))
        layout.addWidget(QLabel(lines[-1]))
    if rng.random() < 0.4:
        lines.append(rng.choice(CHECKS))
        layout.addWidget(QCheckBox(lines[-1]))
    if rng.random() < 0.4:
        lines.append(_file(rng))
        layout.addWidget(QLineEdit(lines[-1]))
    row = QHBoxLayout()
    buttons = rng.sample(BUTTONS, rng.randint(1, 3))
    for name in buttons:
        row.addWidget(QPushButton(name))
    layout.addLayout(row)
    lines.append(" ".join(buttons))
    dialog.resize(rng.randint(360, 640), dialog.sizeHint().height() + rng.randint(0, 40))
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    dialog.grab().save(buffer, "PNG")
    dialog.deleteLater()
    image = Image.open(BytesIO(bytes(buffer.data().data()))).convert("RGB")
    return image, "\n".join(lines)


def has_qt() -> bool:
    """Whether PySide6 (the app's toolkit) is installed, so these screens can be drawn."""
    return importlib.util.find_spec("PySide6") is not None
