"""Connects the reader pane to the engine client: "Read into memory" becomes a read_document job
on the open conversation, its progress and end go back to the pane, Cancel cancels it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6 import QtCore

from app.chat.window import MainWindow
from app.engine_client import EngineClient, JobResult
from app.reader.pane import ReaderPane

log = logging.getLogger(__name__)


class ReaderController(QtCore.QObject):
    """One reader pane and one engine client; at most one read runs at a time."""

    def __init__(
        self,
        pane: ReaderPane,
        client: EngineClient,
        conversation_id: Callable[[], int | None],
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._pane = pane
        self._client = client
        self._conversation_id = conversation_id
        self._request: int | None = None
        self._done = 0
        self._connect()

    def _connect(self) -> None:
        self._pane.read_requested.connect(self._on_read_requested)
        self._pane.cancel_requested.connect(self._on_cancel_requested)
        self._client.job_progress.connect(self._on_job_progress)
        self._client.job_finished.connect(self._on_job_finished)
        self._client.job_failed.connect(self._on_job_failed)

    @QtCore.Slot(object, str)
    def _on_read_requested(self, pages: list[Path], label: str) -> None:
        conversation = self._conversation_id()
        problem = self._client.not_ready_reason(conversation)
        if problem is not None:
            self._pane.on_read_failed(problem)
            return
        assert conversation is not None
        self._done = 0
        self._request = self._client.read_document(conversation, pages, label)
        log.info("reading %s (%d pages) as request %d", label, len(pages), self._request)

    @QtCore.Slot()
    def _on_cancel_requested(self) -> None:
        if self._request is not None:
            self._client.cancel(self._request)

    @QtCore.Slot(int, int, int)
    def _on_job_progress(self, request_id: int, done: int, total: int) -> None:
        if request_id == self._request:
            self._done = done
            self._pane.on_read_progress(done, total)

    @QtCore.Slot(int, object)
    def _on_job_finished(self, request_id: int, result: JobResult) -> None:
        if request_id == self._request:
            self._request = None
            self._pane.on_read_finished(bool(result.cancelled), self._done)

    @QtCore.Slot(int, str)
    def _on_job_failed(self, request_id: int, message: str) -> None:
        if request_id == self._request:
            self._request = None
            self._pane.on_read_failed(message)


def install(window: MainWindow) -> ReaderPane:
    """Dock a reader pane in the main window, wired to its engine client and open conversation."""
    pane = ReaderPane()
    ReaderController(pane, window.engine_client, lambda: window.current_conversation_id, pane)
    window.add_side_pane("Reader", pane)
    # a docked pane is hidden, not closed, with the window: free the page cache on quit
    app = QtCore.QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(pane.close_document)
    return pane
