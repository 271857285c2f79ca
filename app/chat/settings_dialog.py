"""The settings dialog: model directory, device, weight precision, OCR hotkey and theme."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6 import QtGui, QtWidgets

from app.settings import AppSettings

log = logging.getLogger(__name__)


def missing_checkpoint_files(directory: Path) -> list[str]:
    """What a checkpoint directory lacks, as file names; empty when it looks loadable."""
    if not directory.is_dir():
        return [f"{directory} is not a directory"]
    missing = [n for n in ("config.json", "tokenizer.json") if not (directory / n).is_file()]
    if not list(directory.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    return missing


class SettingsDialog(QtWidgets.QDialog):
    def __init__(self, settings: AppSettings, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._settings = settings
        self.model_dir = QtWidgets.QLineEdit(str(settings.get("model_dir")))
        self.model_dir.setPlaceholderText("Empty: the embedded default model")
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._on_browse_clicked)
        model_row = QtWidgets.QHBoxLayout()
        model_row.addWidget(self.model_dir, 1)
        model_row.addWidget(browse)
        self.device = QtWidgets.QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(str(settings.get("device")))
        self.quant = QtWidgets.QComboBox()
        self.quant.addItems(["none", "int8", "int4", "nf4"])
        self.quant.setCurrentText(str(settings.get("quant")))
        self.quant.setToolTip(
            "Smaller, faster weights: int8 and int4 on CPU or CUDA, nf4 on CUDA only. "
            "'none' runs the weights as stored."
        )
        self.hotkey = QtWidgets.QKeySequenceEdit(QtGui.QKeySequence(str(settings.get("hotkey"))))
        self.theme = QtWidgets.QComboBox()
        self.theme.addItems(["system", "light", "dark"])
        self.theme.setCurrentText(str(settings.get("theme")))
        self.problem = QtWidgets.QLabel("")
        self.problem.setWordWrap(True)
        form = QtWidgets.QFormLayout()
        form.addRow("Model directory", model_row)
        form.addRow(
            QtWidgets.QLabel(
                "A Hugging Face checkpoint directory: config.json, *.safetensors, "
                "tokenizer.json (e.g. a download of hustvl/InfiniteVL)."
            )
        )
        form.addRow("Device", self.device)
        form.addRow("Weight precision", self.quant)
        form.addRow("Screen OCR shortcut", self.hotkey)
        form.addRow("Theme", self.theme)
        form.addRow(self.problem)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok
            | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _on_browse_clicked(self) -> None:
        chosen = QtWidgets.QFileDialog.getExistingDirectory(self, "Model directory")
        if chosen:
            self.model_dir.setText(chosen)

    def accept(self) -> None:
        """Save, unless the model directory is clearly no checkpoint: then say what it lacks."""
        model_dir = self.model_dir.text().strip()
        if model_dir:
            missing = missing_checkpoint_files(Path(model_dir).expanduser())
            if missing:
                self.problem.setText("Not a checkpoint directory, missing: " + ", ".join(missing))
                return
        hotkey = self.hotkey.keySequence().toString()
        self._settings.set("model_dir", model_dir)
        self._settings.set("device", self.device.currentText())
        self._settings.set("quant", self.quant.currentText())
        if hotkey:
            self._settings.set("hotkey", hotkey)
        self._settings.set("theme", self.theme.currentText())
        super().accept()
