"""The status bar: model and device, tokens seen and state size of the open conversation,
a busy indicator while the model loads or answers, and transient notices.
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6 import QtWidgets

log = logging.getLogger(__name__)

NOTICE_MS = 8000


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class StatusBar(QtWidgets.QStatusBar):
    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.busy = QtWidgets.QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(120)
        self.busy.setTextVisible(False)
        self.busy.hide()
        self.tokens = QtWidgets.QLabel("")
        self.tokens.setToolTip("Tokens this conversation's memory has seen")
        self.state_size = QtWidgets.QLabel("")
        self.state_size.setToolTip("Size of the conversation's memory; it stops growing")
        self.model = QtWidgets.QLabel("No model")
        for widget in (self.busy, self.tokens, self.state_size, self.model):
            self.addPermanentWidget(widget)

    def set_loading(self, what: str) -> None:
        self.model.setText(f"Loading {what}…")
        self.busy.show()

    def set_busy(self, busy: bool) -> None:
        self.busy.setVisible(busy)

    def set_model(self, info: Any | None) -> None:
        """``info`` is the engine's ModelInfo, None when no model is loaded."""
        self.busy.hide()
        if info is None:
            self.model.setText("No model")
            self.model.setToolTip("")
            return
        quant = getattr(info, "quantization", None)
        precision = f"{info.dtype} + {quant} weights" if quant else info.dtype
        self.model.setText(f"{info.name} · {info.device} · {precision}")
        self.model.setToolTip(f"{info.path}\n{info.num_parameters:,} parameters")

    def set_session(self, tokens_seen: int, state_nbytes: int) -> None:
        self.tokens.setText(f"{tokens_seen:,} tokens seen")
        self.state_size.setText(f"state {human_bytes(state_nbytes)}")

    def clear_session(self) -> None:
        self.tokens.setText("")
        self.state_size.setText("")

    def notify(self, text: str) -> None:
        log.info("status: %s", text)
        self.showMessage(text, NOTICE_MS)
