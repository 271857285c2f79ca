"""Render resources/icons/infinitevl.svg to the PNG sizes desktops and AppStream use.

QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/make_icons.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6 import QtCore, QtGui, QtSvg

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"
SIZES = (64, 128, 256)


def render(svg: Path, size: int, out: Path) -> Path:
    renderer = QtSvg.QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not a valid SVG")
    image = QtGui.QImage(size, size, QtGui.QImage.Format.Format_ARGB32)
    image.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out)):
        raise SystemExit(f"cannot write {out}")
    return out


def main() -> int:
    app = QtGui.QGuiApplication.instance() or QtGui.QGuiApplication(sys.argv[:1])
    for size in SIZES:
        print(render(ICONS / "infinitevl.svg", size, ICONS / f"infinitevl-{size}.png"))
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
