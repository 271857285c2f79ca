"""The settings dialog: model (checkpoint directory or GGUF), device, weight precision, OCR
hotkey and theme."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6 import QtGui, QtWidgets

from app.settings import AppSettings
from engine.backends import is_gguf

log = logging.getLogger(__name__)


GGUF_MAGIC = b"GGUF"


def missing_checkpoint_files(path: Path) -> list[str]:
    """What a model path lacks to load, in words; empty when it looks loadable.

    A checkpoint directory needs config.json, tokenizer.json and safetensors weights; a GGUF
    model is a .gguf file that starts with the GGUF magic, or a directory of such files.
    """
    if path.is_file():
        if path.suffix != ".gguf":
            return [f"{path.name} is neither a checkpoint directory nor a .gguf file"]
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            return [f"{path.name} cannot be read: {exc.strerror or exc}"]
        if magic != GGUF_MAGIC:
            return [f"{path.name} is not a GGUF file (it lacks the GGUF header)"]
        return []
    if not path.is_dir():
        return [f"{path} does not exist"]
    if is_gguf(path):
        return []
    directory = path
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
        self.model_dir.textChanged.connect(self._on_model_changed)
        browse = QtWidgets.QPushButton("Folder…")
        browse.setToolTip("A Hugging Face checkpoint directory")
        browse.clicked.connect(self._on_browse_clicked)
        browse_gguf = QtWidgets.QPushButton("GGUF file…")
        browse_gguf.setToolTip("A GGUF model for llama.cpp (its mmproj beside it for images)")
        browse_gguf.clicked.connect(self._on_browse_gguf_clicked)
        model_row = QtWidgets.QHBoxLayout()
        model_row.addWidget(self.model_dir, 1)
        model_row.addWidget(browse)
        model_row.addWidget(browse_gguf)
        self.device = QtWidgets.QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(str(settings.get("device")))
        self.quant = QtWidgets.QComboBox()
        self.quant.addItems(["none", "int8", "int4", "nf4"])
        self.quant.setCurrentText(str(settings.get("quant")))
        self.hotkey = QtWidgets.QKeySequenceEdit(QtGui.QKeySequence(str(settings.get("hotkey"))))
        self.theme = QtWidgets.QComboBox()
        self.theme.addItems(["system", "light", "dark"])
        self.theme.setCurrentText(str(settings.get("theme")))
        self.problem = QtWidgets.QLabel("")
        self.problem.setWordWrap(True)
        form = QtWidgets.QFormLayout()
        form.addRow("Model", model_row)
        form.addRow(
            QtWidgets.QLabel(
                "A Hugging Face checkpoint directory: config.json, *.safetensors, "
                "tokenizer.json (e.g. a download of hustvl/InfiniteVL), or a GGUF model "
                "(llama.cpp; images need its mmproj-*.gguf in the same folder)."
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
        self._on_model_changed(self.model_dir.text())

    def _on_browse_clicked(self) -> None:
        chosen = QtWidgets.QFileDialog.getExistingDirectory(self, "Model directory")
        if chosen:
            self.model_dir.setText(chosen)

    def _on_browse_gguf_clicked(self) -> None:
        chosen, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "GGUF model", "", "GGUF models (*.gguf)"
        )
        if chosen:
            self.model_dir.setText(chosen)

    def _on_model_changed(self, text: str) -> None:
        # a GGUF file is quantized as stored: the precision choice applies to checkpoints only
        gguf = bool(text.strip()) and is_gguf(Path(text.strip()).expanduser())
        self.quant.setEnabled(not gguf)
        self.quant.setToolTip(
            "A GGUF model runs at the precision its file stores."
            if gguf
            else "Smaller, faster weights: int8 and int4 on CPU or CUDA, nf4 on CUDA only. "
            "'none' runs the weights as stored."
        )

    def accept(self) -> None:
        """Save, unless the model path clearly cannot load: then say what it lacks."""
        model_dir = self.model_dir.text().strip()
        if model_dir:
            missing = missing_checkpoint_files(Path(model_dir).expanduser())
            if missing:
                self.problem.setText("Not a model this app can load: " + "; ".join(missing))
                return
        hotkey = self.hotkey.keySequence().toString()
        self._settings.set("model_dir", model_dir)
        self._settings.set("device", self.device.currentText())
        self._settings.set("quant", self.quant.currentText())
        if hotkey:
            self._settings.set("hotkey", hotkey)
        self._settings.set("theme", self.theme.currentText())
        super().accept()
