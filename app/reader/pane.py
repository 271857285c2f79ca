"""The reader pane: open a PDF or images, browse pages and thumbnails, and ask to read them into
the conversation's memory. It shows state and emits intent; reader/controller.py talks to the
engine client.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from app.reader.chunking import finished_status, parse_page_ranges, reading_status
from app.reader.page_renderer import PageRenderJob, RenderedDocument, RenderSignals
from app.reader.pdf import IMAGE_SUFFIXES, open_document
from engine.errors import InputError

log = logging.getLogger(__name__)

EMPTY_TEXT = "Open or drop a PDF or images to read them."
FILE_FILTER = "Documents (*.pdf {});;All files (*)".format(
    " ".join(f"*{s}" for s in IMAGE_SUFFIXES)
)


class ReaderPane(QtWidgets.QWidget):
    """Pages of one document, and the "Read into memory" job's progress."""

    read_requested = QtCore.Signal(object, str)  # list[Path] page images in order, label
    cancel_requested = QtCore.Signal()
    document_opened = QtCore.Signal(str)  # label
    pages_rendered = QtCore.Signal(int)  # pages ready to read

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.rendered: RenderedDocument | None = None
        self.is_reading = False
        self._ready: set[int] = set()
        self._failed: set[int] = set()
        self._reading: list[int] = []  # page indices of the running read, in order
        self._queued: list[int] | None = None  # a read waiting for its pages to be rendered
        self._page = QtGui.QPixmap()  # the page shown, at its rendered size
        self._total = 0
        self._pool = QtCore.QThreadPool(self)
        # one page at a time: PDFium is serialised anyway, and the engine needs the cores
        self._pool.setMaxThreadCount(1)
        self._signals: RenderSignals | None = None
        self._build()
        self._connect()
        self._update_buttons()
        self.setAcceptDrops(True)

    def _build(self) -> None:
        self.open_button = QtWidgets.QPushButton("Open…")
        self.pages_edit = QtWidgets.QLineEdit()
        self.pages_edit.setPlaceholderText("all pages (or e.g. 1-5, 9)")
        self.read_button = QtWidgets.QPushButton("Read into memory")
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.thumbnails = QtWidgets.QListWidget()
        self.thumbnails.setViewMode(QtWidgets.QListView.ViewMode.ListMode)
        self.thumbnails.setIconSize(QtCore.QSize(96, 128))
        self.thumbnails.setMaximumWidth(180)
        self.page_view = QtWidgets.QLabel(EMPTY_TEXT)
        self.page_view.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.page_scroll = QtWidgets.QScrollArea()
        self.page_scroll.setWidget(self.page_view)
        self.page_scroll.setWidgetResizable(True)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setVisible(False)
        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)

        bar = QtWidgets.QHBoxLayout()
        for w in (self.open_button, self.pages_edit, self.read_button, self.cancel_button):
            bar.addWidget(w)
        split = QtWidgets.QSplitter()
        split.addWidget(self.thumbnails)
        split.addWidget(self.page_scroll)
        split.setStretchFactor(1, 1)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(split, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        self.open_button.clicked.connect(self._on_open_clicked)
        self.read_button.clicked.connect(self._on_read_clicked)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        self.thumbnails.currentRowChanged.connect(self._on_page_chosen)

    def open_paths(self, paths: list[Path]) -> bool:
        """Open a PDF or image files; a bad file is a message in the pane. True when opened."""
        if self.is_reading:
            self._show_status("Wait for the reading to finish, or cancel it, first.")
            return False
        try:
            document = open_document(paths)
        except InputError as exc:
            self._show_status(f"Cannot open: {exc}")
            return False
        self.close_document()
        self.rendered = RenderedDocument(document)
        self._ready, self._failed, self._total = set(), set(), document.num_pages
        for i in range(document.num_pages):
            self.thumbnails.addItem(QtWidgets.QListWidgetItem(f"Page {i + 1}"))
        self._signals = RenderSignals()
        self._signals.page_rendered.connect(self._on_page_rendered)
        self._signals.page_failed.connect(self._on_page_failed)
        self._signals.render_finished.connect(self._on_render_finished)
        self._pool.start(PageRenderJob(self.rendered, self._signals))
        self._show_status(f"{document.label}: rendering {document.num_pages} pages…")
        self._update_buttons()
        self.document_opened.emit(document.label)
        return True

    def close_document(self) -> None:
        """Forget the open document; its renderer stops and its cache folder goes."""
        if self._signals is not None:
            self._signals.page_rendered.disconnect(self._on_page_rendered)
            self._signals.page_failed.disconnect(self._on_page_failed)
            self._signals.render_finished.disconnect(self._on_render_finished)
            self._signals = None
        if self.rendered is not None:
            self.rendered.release()
            self.rendered = None
        self.thumbnails.clear()
        self._page = QtGui.QPixmap()
        self.page_view.setPixmap(self._page)
        self.page_view.setText(EMPTY_TEXT)
        self._ready, self._failed, self._total = set(), set(), 0
        self._queued = None
        self._update_buttons()

    # progress of the read, told by the controller

    @QtCore.Slot(int, int)
    def on_read_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        cancelling = not self.cancel_button.isEnabled() and self.is_reading
        self.status.setText(reading_status(done, total, cancelling))
        if 0 <= done < total and self.rendered is not None:
            self.thumbnails.setCurrentRow(self._reading[done])

    @QtCore.Slot(bool, int)
    def on_read_finished(self, cancelled: bool, pages_read: int) -> None:
        self.is_reading = False
        self.progress.setVisible(False)
        self.status.setText(finished_status(pages_read, len(self._reading), cancelled))
        self._update_buttons()

    @QtCore.Slot(str)
    def on_read_failed(self, message: str) -> None:
        self.is_reading = False
        self.progress.setVisible(False)
        self._show_status(f"Reading failed: {message}")
        self._update_buttons()

    # own slots

    @QtCore.Slot()
    def _on_open_clicked(self) -> None:
        names, _ = QtWidgets.QFileDialog.getOpenFileNames(self, "Open a document", "", FILE_FILTER)
        if names:
            self.open_paths([Path(n) for n in names])

    @QtCore.Slot()
    def _on_read_clicked(self) -> None:
        if self.rendered is None:
            return
        try:
            pages = parse_page_ranges(self.pages_edit.text(), self._total)
        except ValueError as exc:
            self._show_status(f"Pages: {exc}")
            return
        failed = [i + 1 for i in pages if i in self._failed]
        if failed:
            self._show_status(f"Page {failed[0]} could not be rendered; leave it out to read.")
            return
        waiting = [i + 1 for i in pages if i not in self._ready]
        if waiting:
            # start by itself once the renderer has caught up
            self._queued = pages
            self._show_status(f"Reading starts once page {waiting[-1]} is rendered…")
            self._update_buttons()
            return
        self._start_read(pages)

    def _start_read(self, pages: list[int]) -> None:
        assert self.rendered is not None
        self._queued = None
        self._reading = pages
        self.is_reading = True
        self.progress.setRange(0, len(pages))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.status.setText(reading_status(0, len(pages)))
        self._update_buttons()
        paths = [self.rendered.page_path(i) for i in pages]
        self.read_requested.emit(paths, self.rendered.document.label)

    @QtCore.Slot()
    def _on_cancel_clicked(self) -> None:
        if self._queued is not None:
            self._queued = None
            self._show_status("Reading cancelled before it started.")
            self._update_buttons()
            return
        self.cancel_button.setEnabled(False)
        self.status.setText(reading_status(self.progress.value(), self.progress.maximum(), True))
        self.cancel_requested.emit()

    @QtCore.Slot(int)
    def _on_page_chosen(self, row: int) -> None:
        if self.rendered is None or row not in self._ready:
            return
        self._page = QtGui.QPixmap(str(self.rendered.page_path(row)))
        self._fit_page()

    def _fit_page(self) -> None:
        """Show the current page as wide as the view (never enlarged); taller pages scroll."""
        if self._page.isNull():
            return
        width = self.page_scroll.viewport().width() - 4
        page = self._page
        if 0 < width < page.width():
            page = page.scaledToWidth(width, QtCore.Qt.TransformationMode.SmoothTransformation)
        self.page_view.setPixmap(page)

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit_page()

    @QtCore.Slot(int, object)
    def _on_page_rendered(self, index: int, thumb: QtGui.QImage) -> None:
        self._ready.add(index)
        item = self.thumbnails.item(index)
        if item is not None:
            item.setIcon(QtGui.QIcon(QtGui.QPixmap.fromImage(thumb)))
        if index == 0 or self.thumbnails.currentRow() == index:
            self.thumbnails.setCurrentRow(index)
            self._on_page_chosen(index)
        if self._queued is not None and all(i in self._ready for i in self._queued):
            self._start_read(self._queued)
        self._update_buttons()

    @QtCore.Slot(int, str)
    def _on_page_failed(self, index: int, message: str) -> None:
        log.warning("page %d: %s", index + 1, message)
        self._failed.add(index)
        if self._queued is not None and (index in self._queued or index < 0):
            self._queued = None
            message = f"{message} Reading did not start; leave page {index + 1} out to read."
        self._show_status(message)

    @QtCore.Slot(int)
    def _on_render_finished(self, count: int) -> None:
        if self.rendered is not None and not self.is_reading:
            label = self.rendered.document.label
            self.status.setText(f"{label}: {count} of {self._total} pages ready to read.")
        self.pages_rendered.emit(count)

    def _update_buttons(self) -> None:
        has_pages = self.rendered is not None and bool(self._ready)
        self.open_button.setEnabled(not self.is_reading)
        self.pages_edit.setEnabled(not self.is_reading)
        waiting = self._queued is not None
        self.read_button.setEnabled(has_pages and not self.is_reading and not waiting)
        self.cancel_button.setEnabled(self.is_reading or waiting)

    def _show_status(self, text: str) -> None:
        log.info("reader: %s", text)
        self.status.setText(text)

    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802
        self.close_document()
        super().closeEvent(event)
