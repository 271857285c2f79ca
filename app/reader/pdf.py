"""Open a PDF (pypdfium2) or a set of image files as pages; render a page to an RGB array.

Every PDFium call goes through the document's lock: PDFium is not thread-safe, and pages are
rendered on a background thread while the GUI may ask for a page count.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
from PIL import Image, UnidentifiedImageError

from app.reader.chunking import READ_MAX_PIXELS, render_scale
from engine.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_PDF_ERRORS = {
    pdfium.raw.FPDF_ERR_PASSWORD: "is password-protected; open it in a PDF viewer and save an "
    "unprotected copy",
    pdfium.raw.FPDF_ERR_SECURITY: "uses an encryption this reader does not support",
    pdfium.raw.FPDF_ERR_FORMAT: "is damaged or not a PDF",
    pdfium.raw.FPDF_ERR_FILE: "cannot be read",
}


@dataclass(slots=True)
class Document:
    """Pages of one PDF or of a list of images, renderable from any thread."""

    label: str  # what the user calls it: the file name
    num_pages: int
    _pdf: pdfium.PdfDocument | None = None
    _images: tuple[Path, ...] = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def render(self, index: int, max_pixels: int = READ_MAX_PIXELS) -> np.ndarray:
        """Page `index` (zero-based) as RGB uint8 [H, W, 3], at most max_pixels pixels.

        Raises:
            InputError: the page cannot be rendered (a damaged page or image file).
        """
        if not 0 <= index < self.num_pages:
            raise IndexError(f"page {index} of a {self.num_pages}-page document")
        if self._pdf is not None:
            with self._lock:
                try:
                    page = self._pdf[index]
                    width, height = page.get_size()
                    scale = min(render_scale(width, height, max_pixels), 4.0)
                    image = page.render(scale=scale).to_pil()
                except (pdfium.PdfiumError, ValueError) as exc:
                    raise InputError(f"page {index + 1} of {self.label}: {exc}") from exc
            return np.asarray(image.convert("RGB"))
        return _load_image(self._images[index], max_pixels)

    def close(self) -> None:
        if self._pdf is not None:
            with self._lock:
                self._pdf.close()
                self._pdf = None


def open_document(paths: list[Path]) -> Document:
    """One PDF, or one or more image files (each a page, in the order given).

    Raises:
        InputError: no files, a mix of a PDF and other files, an unsupported file type, a
            missing file, an encrypted, damaged or empty PDF. The message names the file.
    """
    if not paths:
        raise InputError("no file chosen")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{missing[0]} does not exist")
    pdfs = [p for p in paths if p.suffix.lower() == ".pdf"]
    if pdfs:
        if len(paths) > 1:
            raise InputError("open one PDF at a time, or only images")
        return _open_pdf(pdfs[0])
    unsupported = [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
    if unsupported:
        raise InputError(
            f"{unsupported[0].name}: not a PDF or an image ({', '.join(IMAGE_SUFFIXES)})"
        )
    label = paths[0].name if len(paths) == 1 else f"{paths[0].name} and {len(paths) - 1} more"
    return Document(label, len(paths), _images=tuple(paths))


def _open_pdf(path: Path) -> Document:
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        reason = _PDF_ERRORS.get(getattr(exc, "err_code", None), f"cannot be opened ({exc})")
        raise InputError(f"{path.name} {reason}") from exc
    if len(pdf) == 0:
        pdf.close()
        raise InputError(f"{path.name} has no pages")
    log.info("opened %s: %d pages", path, len(pdf))
    return Document(path.name, len(pdf), _pdf=pdf)


def _load_image(path: Path, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path.name} is too large to read safely ({exc})") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path.name} is not a readable image ({exc})") from exc
    w, h = rgb.size
    scale = render_scale(w, h, max_pixels)
    if scale < 1:
        rgb = rgb.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
    return np.asarray(rgb)
