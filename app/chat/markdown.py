"""Markdown to the rich text a QLabel shows, with code blocks set apart (shaded, monospace).

Qt's own Markdown reader does the parsing; this only marks the code blocks it found.
"""

from __future__ import annotations

from PySide6 import QtGui

_CODE = QtGui.QTextFormat.Property.BlockCodeFence


def markdown_html(text: str, shade: QtGui.QColor) -> str:
    """HTML for ``text``; fenced or indented code blocks get background ``shade``."""
    document = QtGui.QTextDocument()
    document.setMarkdown(text)
    mono = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
    block = document.begin()
    while block.isValid():
        fmt = block.blockFormat()
        if fmt.hasProperty(_CODE) or fmt.nonBreakableLines():
            cursor = QtGui.QTextCursor(block)
            fmt.setBackground(shade)
            cursor.setBlockFormat(fmt)
            chars = QtGui.QTextCharFormat()
            chars.setFontFamilies([mono.family()])
            cursor.select(QtGui.QTextCursor.SelectionType.BlockUnderCursor)
            cursor.mergeCharFormat(chars)
        block = block.next()
    return document.toHtml()
