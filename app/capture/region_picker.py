"""The frozen-screen overlay: one fullscreen window per screen shows its screenshot; the user drags
a rectangle (Esc cancels) and the picker emits the crop in the screenshot's own pixels.

Geometry lives in capture/geometry.py; this module only turns mouse events into rectangles.
"""

from __future__ import annotations

import logging

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from app.capture.geometry import Rect, ScreenGeometry, logical_to_pixels, match_monitors
from app.capture.geometry import selection_rect as drag_rect
from app.capture.screenshot import MonitorShot
from engine.errors import InputError

log = logging.getLogger(__name__)

HINT = "Drag around the text to read. Esc cancels."


def to_qimage(image: np.ndarray) -> QtGui.QImage:
    """A QImage that owns a copy of an RGB uint8 [H, W, 3] array."""
    h, w, _ = image.shape
    data = np.ascontiguousarray(image)
    return QtGui.QImage(data.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()


class RegionOverlay(QtWidgets.QWidget):
    """Shows one screen's frozen image and reports the rectangle dragged over it."""

    region_dragged = QtCore.Signal(object)  # Rect in this widget's logical coordinates
    cancel_requested = QtCore.Signal()

    def __init__(self, image: np.ndarray, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = image
        self._pixmap = QtGui.QPixmap.fromImage(to_qimage(image))
        self._origin: QtCore.QPointF | None = None
        self._current: QtCore.QPointF | None = None
        self.message = HINT
        self.setWindowFlags(
            QtCore.Qt.WindowType.FramelessWindowHint
            | QtCore.Qt.WindowType.WindowStaysOnTopHint
            | QtCore.Qt.WindowType.Tool
        )
        self.setCursor(QtCore.Qt.CursorShape.CrossCursor)
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(False)

    def show_message(self, text: str) -> None:
        self.message = text
        self.update()

    def selection(self) -> Rect | None:
        if self._origin is None or self._current is None:
            return None
        a, b = self._origin, self._current
        return drag_rect(a.x(), a.y(), b.x(), b.y())

    def mousePressEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802
        if event.button() == QtCore.Qt.MouseButton.LeftButton:
            self._origin = self._current = event.position()
            self.update()

    def mouseMoveEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802
        if self._origin is not None:
            self._current = event.position()
            self.update()

    def mouseReleaseEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802
        if event.button() != QtCore.Qt.MouseButton.LeftButton or self._origin is None:
            return
        self._current = event.position()
        rect = self.selection()
        self._origin = self._current = None
        self.update()
        self.region_dragged.emit(rect)

    def event(self, event: QtCore.QEvent) -> bool:
        # Esc is ours while the overlay is up, even if the app has an Esc shortcut (Stop reply)
        if (
            event.type() == QtCore.QEvent.Type.ShortcutOverride
            and isinstance(event, QtGui.QKeyEvent)
            and event.key() == QtCore.Qt.Key.Key_Escape
        ):
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:  # noqa: N802
        if event.key() == QtCore.Qt.Key.Key_Escape:
            self.cancel_requested.emit()
        else:
            super().keyPressEvent(event)

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802
        painter = QtGui.QPainter(self)
        painter.drawPixmap(self.rect(), self._pixmap)
        shade = QtGui.QColor(0, 0, 0, 90)
        sel = self.selection()
        if sel is None:
            painter.fillRect(self.rect(), shade)
        else:
            area = QtGui.QRegion(self.rect()).subtracted(
                QtGui.QRegion(QtCore.QRectF(sel.x, sel.y, sel.width, sel.height).toRect())
            )
            painter.setClipRegion(area)
            painter.fillRect(self.rect(), shade)
            painter.setClipping(False)
            painter.setPen(QtGui.QPen(QtGui.QColor(255, 140, 0), 2))
            painter.drawRect(QtCore.QRectF(sel.x, sel.y, sel.width, sel.height))
        # the hint on a dark box, readable over any screen content
        metrics = painter.fontMetrics()
        text_w, text_h = metrics.horizontalAdvance(self.message) + 24, metrics.height() + 12
        box = QtCore.QRectF((self.width() - text_w) / 2, 12, text_w, text_h)
        painter.setPen(QtCore.Qt.PenStyle.NoPen)
        painter.setBrush(QtGui.QColor(0, 0, 0, 190))
        painter.drawRoundedRect(box, 6, 6)
        painter.setPen(QtGui.QColor(255, 255, 255))
        painter.drawText(box, QtCore.Qt.AlignmentFlag.AlignCenter, self.message)
        painter.end()


class RegionPicker(QtCore.QObject):
    """Shows an overlay on every screen over the frozen screenshots and emits what was picked."""

    region_selected = QtCore.Signal(object)  # np.ndarray [h, w, 3] uint8, the cropped pixels
    selection_rejected = QtCore.Signal(str)  # why the drag was not usable; the overlay stays
    selection_cancelled = QtCore.Signal()

    def __init__(
        self,
        shots: list[MonitorShot],
        screens: list[QtGui.QScreen] | None = None,
        parent: QtCore.QObject | None = None,
    ) -> None:
        """Pair each Qt screen with its screenshot.

        Raises:
            ValueError: the screenshots do not match the screens (a monitor was plugged in).
        """
        super().__init__(parent)
        self._screens = screens if screens is not None else QtGui.QGuiApplication.screens()
        geometries = [
            ScreenGeometry(_rect(s.geometry()), s.devicePixelRatio()) for s in self._screens
        ]
        order = match_monitors(geometries, [shot.rect for shot in shots])
        self.overlays: list[RegionOverlay] = []
        for screen, shot_index in zip(self._screens, order, strict=True):
            overlay = RegionOverlay(shots[shot_index].image)
            overlay.setScreen(screen)
            overlay.setGeometry(screen.geometry())
            overlay.region_dragged.connect(self._on_region_dragged)
            overlay.cancel_requested.connect(self._on_cancel_requested)
            self.overlays.append(overlay)

    def start(self) -> None:
        for overlay in self.overlays:
            overlay.showFullScreen()
        if self.overlays:
            self.overlays[0].activateWindow()
            self.overlays[0].setFocus()

    def close(self) -> None:
        for overlay in self.overlays:
            overlay.close()

    @QtCore.Slot(object)
    def _on_region_dragged(self, selection: Rect) -> None:
        overlay = self.sender()
        assert isinstance(overlay, RegionOverlay)
        h, w, _ = overlay.image.shape
        try:
            box = logical_to_pixels(
                selection, Rect(0, 0, overlay.width(), overlay.height()), (w, h)
            )
        except InputError as exc:
            log.info("selection rejected: %s", exc)
            overlay.show_message(f"{exc}. Esc cancels.")
            self.selection_rejected.emit(str(exc))
            return
        x, y, bw, bh = int(box.x), int(box.y), int(box.width), int(box.height)
        crop = np.ascontiguousarray(overlay.image[y : y + bh, x : x + bw])
        log.info("picked %dx%d pixels at (%d, %d)", bw, bh, x, y)
        self.close()
        self.region_selected.emit(crop)

    @QtCore.Slot()
    def _on_cancel_requested(self) -> None:
        self.close()
        self.selection_cancelled.emit()


def _rect(r: QtCore.QRect) -> Rect:
    return Rect(r.x(), r.y(), r.width(), r.height())
