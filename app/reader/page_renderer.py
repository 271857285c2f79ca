"""Render a document's pages off the GUI thread: each page once, at reading size, to a PNG in a
per-document cache folder, plus a thumbnail. The engine later reads the PNGs by path.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6 import QtCore, QtGui

from app.reader.chunking import fit_size
from app.reader.pdf import Document
from engine.errors import InputError

log = logging.getLogger(__name__)


class RenderedDocument:
    """A document and its cache folder; freed when both the reader and the renderer let go."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.cache_dir = Path(tempfile.mkdtemp(prefix="infinitevl-pages-"))
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._holders = 2  # the pane and the render job

    def page_path(self, index: int) -> Path:
        return self.cache_dir / f"page-{index + 1:05d}.png"

    def release(self) -> None:
        """Called once by the pane (document closed) and once by the job (done or stopped)."""
        self.stop.set()
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.document.close()
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            log.debug("freed %s", self.cache_dir)


class RenderSignals(QtCore.QObject):
    page_rendered = QtCore.Signal(int, object)  # page index, QImage thumbnail
    page_failed = QtCore.Signal(int, str)  # page index, user-facing reason
    render_finished = QtCore.Signal(int)  # pages rendered


class PageRenderJob(QtCore.QRunnable):
    """Renders every page in order; stops between pages when the document is released."""

    def __init__(self, rendered: RenderedDocument, signals: RenderSignals) -> None:
        super().__init__()
        self._rendered = rendered
        self._signals = signals

    def run(self) -> None:
        doc, count = self._rendered.document, 0
        try:
            for index in range(doc.num_pages):
                if self._rendered.stop.is_set():
                    return
                try:
                    image = doc.render(index)
                except InputError as exc:
                    self._signals.page_failed.emit(index, str(exc))
                    continue
                Image.fromarray(image).save(self._rendered.page_path(index), compress_level=1)
                self._signals.page_rendered.emit(index, thumbnail(image))
                count += 1
            self._signals.render_finished.emit(count)
        except Exception as exc:  # thread boundary: report, never lose it in the pool
            log.exception("rendering %s failed", doc.label)
            self._signals.page_failed.emit(-1, f"{type(exc).__name__}: {exc}")
        finally:
            self._rendered.release()


def thumbnail(image: np.ndarray) -> QtGui.QImage:
    """A QImage thumbnail of an RGB [H, W, 3] page (QImage, unlike QPixmap, works off-thread)."""
    h, w, _ = image.shape
    small = np.ascontiguousarray(
        Image.fromarray(image).resize(fit_size(w, h), Image.Resampling.BILINEAR)
    )
    sh, sw, _ = small.shape
    fmt = QtGui.QImage.Format.Format_RGB888
    return QtGui.QImage(small.data, sw, sh, 3 * sw, fmt).copy()
