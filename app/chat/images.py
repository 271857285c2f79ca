"""Images at the app boundary: Qt images and files become uint8 [H, W, 3] arrays and PNG bytes.

The engine only ever sees numpy arrays; the store only ever sees PNG bytes.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6 import QtCore, QtGui

log = logging.getLogger(__name__)

MAX_SIDE = 4096  # pixels; larger images are scaled down before they are stored or sent
THUMB_SIDE = 72


def qimage_to_array(image: QtGui.QImage) -> np.ndarray:
    """A copy of ``image`` as uint8 [H, W, 3] RGB."""
    rgb = image.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    h, w, stride = rgb.height(), rgb.width(), rgb.bytesPerLine()
    buf = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=stride * h)
    return buf.reshape(h, stride)[:, : w * 3].reshape(h, w, 3).copy()


def array_to_qimage(array: np.ndarray) -> QtGui.QImage:
    array = np.ascontiguousarray(array[..., :3], dtype=np.uint8)
    h, w = array.shape[:2]
    image = QtGui.QImage(array.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888)
    return image.copy()  # detach from the numpy buffer


def load_image_file(path: Path) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3]; raises ValueError naming the file if it cannot."""
    try:
        with Image.open(path) as im:
            im.thumbnail((MAX_SIDE, MAX_SIDE))
            return np.asarray(im.convert("RGB")).copy()
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path.name} is not an image this app can read ({exc})") from exc


def check_array(array: np.ndarray) -> np.ndarray:
    """Validate an image array from another pane; returns uint8 [H, W, 3]."""
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape[:2]:
        raise ValueError(f"an image must be [H, W, 3] with H, W > 0, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"an image must be uint8, got {array.dtype}")
    return np.ascontiguousarray(array[..., :3])


def to_png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def thumbnail(array: np.ndarray, side: int = THUMB_SIDE) -> QtGui.QPixmap:
    pixmap = QtGui.QPixmap.fromImage(array_to_qimage(array))
    return pixmap.scaled(
        side,
        side,
        QtCore.Qt.AspectRatioMode.KeepAspectRatio,
        QtCore.Qt.TransformationMode.SmoothTransformation,
    )


def thumbnail_of_file(path: Path, side: int = THUMB_SIDE) -> QtGui.QPixmap:
    pixmap = QtGui.QPixmap(str(path))
    if pixmap.isNull():
        log.warning("cannot show attachment %s", path)
        return pixmap
    return pixmap.scaled(
        side,
        side,
        QtCore.Qt.AspectRatioMode.KeepAspectRatio,
        QtCore.Qt.TransformationMode.SmoothTransformation,
    )
