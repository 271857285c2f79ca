"""Dialogs drawn by real Qt widgets, cut into the pieces OCR reads: a training set for the
embedded model, written as LLaVA-style JSON (`engine.train.sharegpt` reads it).

The embedded model reads the synthetic screens better than Tesseract, but dialogs drawn by Qt far
worse (CER 0.25 against 0.007, `benchmarks/eval_default_model.py`'s "Qt widget dialogs"): a
toolkit's 9-point labels, hinted and anti-aliased by Qt's own text engine, framed fields and
buttons, check boxes and radio buttons beside their labels. The generator's PIL-drawn dialogs
(`engine.train.synthetic.dialogs`) only resemble them, and the GPU that trains has no Qt. So this
module draws dialogs with the widgets themselves, here, and writes each piece that OCR would show
the model (`engine.ocr_lines.piece_boxes`, shown as `as_shown` shows it), with its text.

What the dialogs say comes from the generator's own templates and lists
(`engine.train.synthetic.dialogs`: titles, messages, check boxes, buttons, file names) and from
this module's form labels, never from `benchmarks/qt_screens.py`'s, so the evaluation's dialogs
stay unseen. Fonts, sizes, palettes and widget kinds vary more than the evaluation's.

A piece's text is that of the widgets it covers, left to right. A band of text is written only
when each of its widgets lies in one piece, each piece holds a widget, and no piece holds
widgets above one another; other bands are left out (counted in the summary).

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m app.widget_dialogs --out DIR --dialogs 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.ocr import OCR_PROMPT
from engine.ocr_lines import as_shown, band_text_heights, piece_boxes
from engine.train.synthetic.dialogs import BUTTONS, CHECKS, TITLES, file_name, ui_message
from engine.train.synthetic.tasks import IMAGE_TAG
from engine.train.text_sources import TextSource

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)

FAMILIES = ("Sans Serif", "DejaVu Sans", "Liberation Sans", "FreeSans", "DejaVu Sans Condensed")
FAMILY_WEIGHTS = (6, 2, 2, 1, 1)  # the toolkit's default face most often, as on a desktop
POINT_SIZES = (8, 9, 9, 10, 10, 11, 12, 13)
FORM_LABELS = ("Name:", "Email:", "Folder:", "Server:", "Port:", "User name:", "Password hint:",
               "Location:", "Size:", "Created:", "Modified:", "Owner:", "Tags:", "Comment:",
               "Timeout:", "Language:", "Printer:", "Copies:", "Quality:", "Device:")  # fmt: skip
UNITS = (" MB", " %", " min", " s", " px", " dpi", "")
DARK_SHARE = 0.25  # dialogs drawn in a dark palette


@dataclass(slots=True)
class Label:
    """A text a dialog shows, and the widget's box in the dialog's picture; for a plain label,
    a check box or a radio button, also where each of its words is drawn:
    (word, left, right) columns of the picture, so that a text OCR cuts between its words
    (`engine.ocr_lines.word_cuts`) is parted with it."""

    text: str
    box: Box
    words: tuple[tuple[str, int, int], ...] = ()


@dataclass(slots=True)
class Summary:
    """What `write_set` wrote and left out."""

    dialogs: int = 0
    pieces: int = 0
    bands_written: int = 0
    bands_left_out: int = 0


def app() -> Any:
    """The process's QApplication (a new offscreen one when there is none)."""
    from PySide6.QtWidgets import QApplication

    existing = QApplication.instance()
    return existing or QApplication(["widget_dialogs", "-platform", "offscreen"])


def grab(widget: Any) -> Image.Image:
    """`widget` drawn by Qt (not shown), as an RGB picture."""
    from PySide6.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    widget.grab().save(buffer, "PNG")
    return Image.open(BytesIO(bytes(buffer.data().data()))).convert("RGB")


def _dark_palette() -> Any:
    from PySide6.QtGui import QColor, QPalette

    p = QPalette()
    roles = QPalette.ColorRole
    for role, grey in ((roles.Window, 48), (roles.Base, 32), (roles.Button, 60),
                       (roles.AlternateBase, 56)):  # fmt: skip
        p.setColor(role, QColor(grey, grey, grey))
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(role, QColor(230, 230, 230))
    return p


def draw_dialog(rng: random.Random, src: TextSource) -> tuple[Image.Image, list[Label]]:
    """One dialog drawn by Qt widgets: its picture and its texts with their widgets' boxes."""
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QFont
    from PySide6.QtWidgets import (
        QCheckBox,
        QComboBox,
        QGroupBox,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QPushButton,
        QRadioButton,
        QSpinBox,
        QVBoxLayout,
        QWidget,
    )

    app()
    dialog = QWidget()
    if rng.random() < DARK_SHARE:
        dialog.setPalette(_dark_palette())
    font = QFont(rng.choices(FAMILIES, FAMILY_WEIGHTS)[0], rng.choice(POINT_SIZES))
    dialog.setFont(font)
    layout = QVBoxLayout(dialog)
    layout.setSpacing(rng.randint(4, 10))
    texts: list[tuple[str, Any]] = []  # (text, widget), for the boxes once laid out

    def add(widget: Any, text: str, into: Any = layout) -> Any:
        into.addWidget(widget)
        texts.append((text, widget))
        return widget

    title = rng.choice(TITLES) if rng.random() < 0.7 else ui_message(rng, src)
    bold = QFont(font)
    bold.setBold(True)
    bold.setPointSize(font.pointSize() + rng.choice([0, 0, 1, 2]))
    add(QLabel(title), title).setFont(bold)
    host = layout
    if rng.random() < 0.2:  # the rest inside a group box, its title a text of its own
        name = rng.choice(TITLES)
        group = add(QGroupBox(name), name)
        host = QVBoxLayout(group)
    for _ in range(rng.randint(1, 3)):
        message = ui_message(rng, src)
        add(QLabel(message), message, host)
    for _ in range(rng.choice([0, 0, 1, 2])):
        row = QHBoxLayout()
        host.addLayout(row)
        label = rng.choice(FORM_LABELS)
        add(QLabel(label), label, row)
        kind = rng.random()
        if kind < 0.5:
            value = file_name(rng, src) if rng.random() < 0.5 else src.name(rng)
            add(QLineEdit(value), value, row)
        elif kind < 0.8:
            box = QComboBox()
            value = rng.choice([src.city(rng), src.name(rng), file_name(rng, src)])
            box.addItem(value)
            add(box, value, row)
        else:
            spin = QSpinBox()
            spin.setRange(0, 100_000)
            spin.setValue(rng.randint(0, 9999))
            spin.setSuffix(rng.choice(UNITS))
            add(spin, spin.text(), row)
        if rng.random() < 0.5:
            row.addStretch(1)
    for _ in range(rng.choice([0, 0, 1, 2])):
        check = rng.choice(CHECKS)
        widget = QCheckBox(check) if rng.random() < 0.6 else QRadioButton(check)
        widget.setChecked(rng.random() < 0.5)
        add(widget, check, host)
    if rng.random() < 0.3:
        value = file_name(rng, src)
        add(QLineEdit(value), value, host)
    row = QHBoxLayout()
    layout.addLayout(row)
    if rng.random() < 0.5:
        row.addStretch(1)
    for name in rng.sample(BUTTONS, rng.randint(1, 3)):
        add(QPushButton(name), name, row)
    dialog.resize(rng.randint(320, 720), dialog.sizeHint().height() + rng.randint(0, 40))
    image = grab(dialog)  # lays the dialog out at its size
    labels = []
    for text, widget in texts:
        at = widget.mapTo(dialog, QPoint(0, 0))
        w, h = widget.width(), widget.height()
        if isinstance(widget, QGroupBox):  # its title, on the top of its frame
            h = widget.fontMetrics().height() + 2
        words = _word_columns(widget, at.x())
        labels.append(Label(text, (at.x(), at.y(), at.x() + w, at.y() + h), words))
    dialog.deleteLater()
    return image, labels


def _text_left(widget: Any) -> int | None:
    """The column of `widget` where its text starts, for the widgets that draw it left-aligned
    from a known edge: a plain QLabel (no frame, so no indent) from its contents' left edge, a
    check box or radio button from its style's contents rectangle (past the indicator); None
    for others."""
    from PySide6.QtWidgets import QCheckBox, QLabel, QRadioButton, QStyle, QStyleOptionButton

    if type(widget) is QLabel:
        return int(widget.contentsRect().x() + widget.margin())
    contents = {QCheckBox: QStyle.SubElement.SE_CheckBoxContents,
                QRadioButton: QStyle.SubElement.SE_RadioButtonContents}  # fmt: skip
    element = contents.get(type(widget))
    if element is None:
        return None
    option = QStyleOptionButton()
    widget.initStyleOption(option)
    return int(widget.style().subElementRect(element, option, widget).x())


def _word_columns(widget: Any, x: int) -> tuple[tuple[str, int, int], ...]:
    """(word, left, right) columns of each word of `widget`, whose left edge is at column `x`
    of the dialog, where its text is drawn left-aligned (`_text_left`): each word where the
    font's advance of the text before it ends; () for widgets that draw it otherwise."""
    text_left = _text_left(widget)
    if text_left is None:
        return ()
    metrics = widget.fontMetrics()
    text = widget.text()
    left = x + text_left
    out = []
    at = 0
    for word in text.split():
        begin = text.index(word, at)
        at = begin + len(word)
        out.append((word, left + metrics.horizontalAdvance(text[:begin]),
                    left + metrics.horizontalAdvance(text[:at])))  # fmt: skip
    return tuple(out)


def _split_by_words(label: Label, pieces: Sequence[Box]) -> list[tuple[int, Label]] | None:
    """`label` parted among the `pieces` it spans, by where its words are drawn: (piece index,
    the words in that piece as a label of their own); None where it has no word columns or a
    word overlaps two pieces."""
    parts: dict[int, list[tuple[str, int, int]]] = {}
    for word in label.words:
        hits = [i for i, p in enumerate(pieces) if _overlap((p[0], p[2]), word[1:]) > 0]
        if len(hits) != 1:
            return None
        parts.setdefault(hits[0], []).append(word)
    if not parts:
        return None
    top, bottom = label.box[1], label.box[3]
    return [
        (i, Label(" ".join(w for w, _, _ in ws), (ws[0][1], top, ws[-1][2], bottom)))
        for i, ws in sorted(parts.items())
    ]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def piece_texts(
    boxes: Sequence[tuple[int, Box]], labels: Sequence[Label]
) -> tuple[list[tuple[Box, str]], int]:
    """The texts of the pieces `boxes` (`engine.ocr_lines.piece_boxes` of a dialog) from the
    widgets' `labels`: ([(piece box, text)] of the bands whose widgets are placed plainly,
    bands left out). A widget belongs to the band that holds its middle row and to the piece of
    that band its columns overlap; a label or check box that OCR cut between its words, each
    word to the piece it lies in. A band is left out when another widget overlaps two of its
    pieces, a word does, a piece holds none, or a piece holds widgets above one another."""
    bands: dict[int, list[Box]] = {}
    for line, box in boxes:
        bands.setdefault(line, []).append(box)
    written: list[tuple[Box, str]] = []
    left_out = 0
    for pieces in bands.values():
        top, bottom = pieces[0][1], pieces[0][3]
        inside = [lb for lb in labels if top <= (lb.box[1] + lb.box[3]) // 2 < bottom]
        held: list[list[Label]] = [[] for _ in pieces]
        plain = True
        for lb in inside:
            hits = [i for i, p in enumerate(pieces)
                    if _overlap((p[0], p[2]), (lb.box[0], lb.box[2])) > 0]  # fmt: skip
            if len(hits) == 1:
                held[hits[0]].append(lb)
                continue
            parts = _split_by_words(lb, pieces) if len(hits) > 1 else None
            if parts is None:
                plain = False
                break
            for i, part in parts:
                held[i].append(part)
        plain = plain and all(held) and all(_side_by_side(h) for h in held)
        if not plain:
            left_out += 1
            continue
        for box, on in zip(pieces, held, strict=True):
            written.append((box, " ".join(lb.text for lb in sorted(on, key=lambda x: x.box[0]))))
    return written, left_out


def _side_by_side(labels: Sequence[Label]) -> bool:
    """Whether each of `labels` has its middle row within every other's rows."""
    return all(
        b.box[1] <= (a.box[1] + a.box[3]) // 2 < b.box[3] for a in labels for b in labels
    )  # fmt: skip


def _compact(image: Image.Image) -> Image.Image:
    """`image` in one channel when its three are equal (a grey palette's pieces: less than half
    the bytes, and the same picture once read back as RGB), else as it is."""
    pixels = np.asarray(image)
    if (pixels == pixels[:, :, :1]).all():
        return image.convert("L")
    return image


def record(image_path: str, text: str) -> dict[str, Any]:
    """One LLaVA-style record: the piece, the OCR prompt the app asks, and the text."""
    return {
        "images": [image_path],
        "messages": [
            {"role": "user", "content": f"{IMAGE_TAG}{OCR_PROMPT}"},
            {"role": "assistant", "content": text},
        ],
    }


def write_set(out: Path, dialogs: int, seed: int, src: TextSource | None = None) -> Summary:
    """Draws `dialogs` dialogs from `seed` and writes their pieces under `out/pieces/` and their
    records to `out/train.json`; returns what was written and left out."""
    src = src or TextSource.from_stdlib()
    (out / "pieces").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    summary = Summary()
    for d in range(dialogs):
        image, labels = draw_dialog(random.Random(seed * 1_000_003 + d), src)
        boxes = piece_boxes(image)
        heights = band_text_heights(image, boxes)
        written, left_out = piece_texts(boxes, labels)
        summary.dialogs += 1
        summary.bands_left_out += left_out
        summary.bands_written += len({b[1] for b, _ in written})
        for k, (box, text) in enumerate(written):
            name = f"pieces/{d:06d}_{k:02d}.png"
            shown = as_shown(image.crop(box), heights[box[1], box[3]])
            _compact(shown).save(out / name, optimize=True)
            records.append(record(name, text))
        if (d + 1) % 200 == 0:
            log.info("%d of %d dialogs, %d pieces", d + 1, dialogs, len(records))
    summary.pieces = len(records)
    (out / "train.json").write_text(json.dumps(records, indent=0), encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m app.widget_dialogs",
        description="Draw dialogs with real Qt widgets (offscreen) and write the pieces OCR "
        "reads, with their texts, as a LLaVA-style JSON training set (OUT/train.json, "
        "OUT/pieces/*.png), for engine/train's sft.data.sharegpt.",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    p.add_argument("--dialogs", type=int, default=2000, help="dialogs to draw")
    p.add_argument("--seed", type=int, default=8, help="seed of the dialogs (evaluation "
                   "seeds are far from the small ones)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dialogs < 1:
        p.error("--dialogs must be at least 1")
    if (args.out / "train.json").exists():
        p.error(f"{args.out / 'train.json'} exists: name a new folder")
    start = time.perf_counter()
    s = write_set(args.out, args.dialogs, args.seed)
    print(f"{s.dialogs} dialogs -> {s.pieces} pieces in {args.out} "
          f"({s.bands_written} bands written, {s.bands_left_out} left out) "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
