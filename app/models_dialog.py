"""The Models dialog: local models in the Hugging Face cache; download, select, delete.

Listing, downloading and deleting run through ``app.tasks.run_in_background`` (engine.models
does the work), so the window never blocks; a download shows its bytes and can be cancelled
(the partial file stays and the next download resumes it). Nothing touches the network until
the user presses Download. ``install(window)`` adds File > Models… and applies a selected model
the way the settings dialog does (saved as ``model_dir``, then loaded).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from app.tasks import run_in_background
from engine import (
    CancelToken,
    DownloadProgress,
    LocalModel,
    delete_model,
    download_model,
    hub_cache_dir,
    list_models,
)

log = logging.getLogger(__name__)

_COLUMNS = ("Model", "Revision", "Size", "Folder")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB" if nbytes < 1e9 else f"{nbytes / 1e9:,.2f} GB"


class _ProgressRelay(QtCore.QObject):
    """Carries download progress from the pool thread to the GUI thread (queued)."""

    progressed = QtCore.Signal(object)  # DownloadProgress


class ModelsDialog(QtWidgets.QDialog):
    """Lists the cache's models; emits ``model_selected(path)`` when the user picks one."""

    model_selected = QtCore.Signal(str)  # checkpoint directory; "" is the embedded default
    models_listed = QtCore.Signal(list)  # list[LocalModel], after each refresh
    download_finished = QtCore.Signal(str)  # snapshot directory
    download_failed = QtCore.Signal(str)  # user-facing message (also shown in the dialog)

    def __init__(
        self,
        current_model: str = "",
        cache_dir: Path | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(760, 380)
        self._cache_dir = cache_dir
        self._current = current_model
        self._models: list[LocalModel] = []
        self._cancel: CancelToken | None = None
        self._relay = _ProgressRelay(self)
        self._build()
        self._connect()
        self.refresh()

    def _build(self) -> None:
        where = self._cache_dir or hub_cache_dir()
        self.table = QtWidgets.QTableWidget(0, len(_COLUMNS), self)
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.use_button = QtWidgets.QPushButton("Use this model")
        self.delete_button = QtWidgets.QPushButton("Delete…")
        self.default_button = QtWidgets.QPushButton("Use the embedded model")
        self.repo_input = QtWidgets.QLineEdit()
        self.repo_input.setPlaceholderText("org/name[@revision], e.g. hustvl/InfiniteVL")
        self.download_button = QtWidgets.QPushButton("Download")
        self.cancel_button = QtWidgets.QPushButton("Cancel download")
        self.cancel_button.setVisible(False)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setVisible(False)
        self.message = QtWidgets.QLabel(f"Models in {where}")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.use_button)
        row.addWidget(self.delete_button)
        row.addStretch(1)
        row.addWidget(self.default_button)
        fetch = QtWidgets.QHBoxLayout()
        fetch.addWidget(self.repo_input, 1)
        fetch.addWidget(self.download_button)
        fetch.addWidget(self.cancel_button)
        close = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addLayout(row)
        layout.addWidget(QtWidgets.QLabel("Download from the Hugging Face hub (safetensors only):"))
        layout.addLayout(fetch)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(close)
        self._update_buttons()

    def _connect(self) -> None:
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemDoubleClicked.connect(self._on_use_clicked)
        self.use_button.clicked.connect(self._on_use_clicked)
        self.delete_button.clicked.connect(self._on_delete_clicked)
        self.default_button.clicked.connect(self._on_default_clicked)
        self.download_button.clicked.connect(self._on_download_clicked)
        self.repo_input.returnPressed.connect(self._on_download_clicked)
        self.cancel_button.clicked.connect(self.cancel_download)
        self._relay.progressed.connect(self._on_download_progressed)

    # the list

    @QtCore.Slot()
    def open_models(self) -> None:
        """Show the dialog (not modal: a download may run while the chat goes on)."""
        self.refresh()
        self.show()
        self.raise_()

    def refresh(self) -> None:
        cache_dir = self._cache_dir
        run_in_background(lambda: list_models(cache_dir), self._on_listed, self._on_failed)

    def selected_model(self) -> LocalModel | None:
        rows = self.table.selectionModel().selectedRows()
        return self._models[rows[0].row()] if rows else None

    def set_current_model(self, path: str) -> None:
        self._current = path
        self._on_listed(self._models)

    def _on_listed(self, models: list[LocalModel]) -> None:
        self._models = models
        self.table.setRowCount(len(models))
        for i, m in enumerate(models):
            name = m.repo_id + ("  (in use)" if str(m.path) == self._current else "")
            if not m.is_checkpoint:
                name += "  (incomplete)"
            refs = f"{m.revision[:10]} {','.join(m.refs)}".strip()
            for column, text in enumerate((name, refs, _size(m.nbytes), str(m.path))):
                self.table.setItem(i, column, QtWidgets.QTableWidgetItem(text))
        self._update_buttons()
        self.models_listed.emit(models)

    def _update_buttons(self) -> None:
        model = self.selected_model()
        busy = self._cancel is not None
        self.use_button.setEnabled(model is not None and model.is_checkpoint)
        self.delete_button.setEnabled(model is not None and not busy)
        self.download_button.setEnabled(not busy)

    @QtCore.Slot()
    def _on_use_clicked(self) -> None:
        model = self.selected_model()
        if model is None or not model.is_checkpoint:
            return
        self.message.setText(f"Loading {model.repo_id} ({model.revision[:10]})…")
        self.model_selected.emit(str(model.path))

    @QtCore.Slot()
    def _on_default_clicked(self) -> None:
        self.message.setText("Loading the embedded default model…")
        self.model_selected.emit("")

    @QtCore.Slot()
    def _on_delete_clicked(self) -> None:
        model = self.selected_model()
        if model is None:
            return
        if str(model.path) == self._current:
            self.message.setText(f"{model.repo_id} is in use: choose another model first.")
            return
        answer = QtWidgets.QMessageBox.question(
            self, "Delete model", f"Delete {model.repo_id} ({_size(model.nbytes)}) from the disk?"
        )
        if answer == QtWidgets.QMessageBox.StandardButton.Yes:
            self.delete(model)

    def delete(self, model: LocalModel) -> None:
        """Delete one revision in the background, then list again."""
        cache_dir, spec = self._cache_dir, f"{model.repo_id}@{model.revision}"
        self.message.setText(f"Deleting {model.repo_id}…")

        def deleted(freed: int) -> None:
            self.message.setText(f"Deleted {model.repo_id} ({_size(freed)} freed).")
            self.refresh()

        run_in_background(lambda: delete_model(spec, cache_dir), deleted, self._on_failed)

    # downloads

    @QtCore.Slot()
    def _on_download_clicked(self) -> None:
        spec = self.repo_input.text().strip()
        repo_id, _, revision = spec.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            self.message.setText("Type a model as org/name, e.g. hustvl/InfiniteVL.")
            return
        self.start_download(repo_id, revision or "main")

    def start_download(self, repo_id: str, revision: str = "main") -> None:
        """Download in the background with progress; Cancel keeps the partial file."""
        cancel = self._cancel = CancelToken()
        cache_dir, relay = self._cache_dir, self._relay
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.message.setText(f"Downloading {repo_id}…")
        self._update_buttons()

        def work() -> Path:
            return download_model(
                repo_id,
                revision,
                cache_dir=cache_dir,
                progress=relay.progressed.emit,
                cancel=cancel,
            )

        run_in_background(work, self._on_downloaded, self._on_download_failed)

    def cancel_download(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    @property
    def is_downloading(self) -> bool:
        return self._cancel is not None

    @QtCore.Slot(object)
    def _on_download_progressed(self, p: DownloadProgress) -> None:
        if not self.is_downloading or p.total <= 0:
            return
        # a QProgressBar holds an int: count in KB so a 9 GB model fits
        self.progress.setRange(0, max(1, p.total // 1000))
        self.progress.setValue(p.done // 1000)
        self.message.setText(f"Downloading {p.filename}: {_size(p.done)} of {_size(p.total)}")

    def _finish_download(self) -> None:
        self._cancel = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._update_buttons()

    def _on_downloaded(self, path: Path) -> None:
        self._finish_download()
        self.message.setText(f"Downloaded to {path}. Select it and press “Use this model”.")
        self.refresh()
        self.download_finished.emit(str(path))

    def _on_download_failed(self, message: str) -> None:
        cancelled = self._cancel is not None and self._cancel.is_set()
        self._finish_download()
        text = "Download cancelled; downloading again resumes it." if cancelled else message
        self.message.setText(text)
        self.download_failed.emit(text)

    def _on_failed(self, message: str) -> None:
        self.message.setText(message)


def install(window: Any) -> ModelsDialog:
    """Add File > Models… to ``window``; a selected model is saved as ``model_dir`` and loaded."""
    dialog = ModelsDialog(str(window.settings.get("model_dir")), parent=window)

    def use(path: str) -> None:
        window.settings.set("model_dir", path)
        window.settings_changed.emit()
        window.controller.stop()
        window.load_model()
        dialog.set_current_model(path)

    dialog.model_selected.connect(use)
    file_menu = next(
        a.menu() for a in window.menuBar().actions() if a.menu() and a.text() == "&File"
    )
    action = QtGui.QAction("&Models…", window)
    action.triggered.connect(dialog.open_models)
    settings = next((a for a in file_menu.actions() if a.text().startswith("&Settings")), None)
    file_menu.insertAction(settings, action)
    window.models_dialog = dialog
    # a download runs on Qt's thread pool, which the app waits for at exit: stop it first
    app = QtWidgets.QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(dialog.cancel_download)
    return dialog
