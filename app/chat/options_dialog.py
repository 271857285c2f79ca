"""Per-conversation options: the system prompt and the sampling settings of its replies."""

from __future__ import annotations

import logging
from typing import Any

from PySide6 import QtWidgets

from engine import EngineError, SamplingParams

log = logging.getLogger(__name__)


class ConversationOptionsDialog(QtWidgets.QDialog):
    """Edits a system prompt and a SamplingParams; ``values()`` gives them back validated."""

    def __init__(
        self, system_prompt: str, sampling: dict[str, Any], parent: QtWidgets.QWidget | None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Conversation options")
        try:
            params = SamplingParams(**sampling)
        except (EngineError, TypeError) as exc:
            log.warning("stored sampling %r invalid (%s); showing defaults", sampling, exc)
            params = SamplingParams()
        self.system_prompt = QtWidgets.QPlainTextEdit(system_prompt)
        self.system_prompt.setPlaceholderText("Empty: the model's default system prompt")
        self.temperature = QtWidgets.QDoubleSpinBox(
            minimum=0.0, maximum=2.0, singleStep=0.1, decimals=2, value=params.temperature
        )
        self.top_p = QtWidgets.QDoubleSpinBox(
            minimum=0.01, maximum=1.0, singleStep=0.05, decimals=2, value=params.top_p
        )
        self.top_k = QtWidgets.QSpinBox(minimum=0, maximum=1000, value=params.top_k)
        self.repetition_penalty = QtWidgets.QDoubleSpinBox(
            minimum=0.5, maximum=2.0, singleStep=0.05, decimals=2, value=params.repetition_penalty
        )
        self.max_new_tokens = QtWidgets.QSpinBox(
            minimum=1, maximum=32768, value=params.max_new_tokens
        )
        self.seed = QtWidgets.QSpinBox(minimum=-1, maximum=2**31 - 1)
        self.seed.setValue(-1 if params.seed is None else params.seed)
        self.seed.setSpecialValueText("random")
        form = QtWidgets.QFormLayout()
        form.addRow("System prompt", self.system_prompt)
        form.addRow(
            QtWidgets.QLabel("A new system prompt re-reads the conversation on its next message.")
        )
        form.addRow("Temperature (0 = greedy)", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k (0 = off)", self.top_k)
        form.addRow("Repetition penalty", self.repetition_penalty)
        form.addRow("Max new tokens", self.max_new_tokens)
        form.addRow("Seed", self.seed)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok
            | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def values(self) -> tuple[str, dict[str, Any]]:
        """The system prompt and the sampling fields that differ from the defaults."""
        seed = self.seed.value()
        params = SamplingParams(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            repetition_penalty=self.repetition_penalty.value(),
            max_new_tokens=self.max_new_tokens.value(),
            seed=None if seed < 0 else seed,
        )
        defaults = SamplingParams()
        changed = {
            name: getattr(params, name)
            for name in (
                "temperature",
                "top_p",
                "top_k",
                "repetition_penalty",
                "max_new_tokens",
                "seed",
            )
            if getattr(params, name) != getattr(defaults, name)
        }
        return self.system_prompt.toPlainText().strip(), changed
