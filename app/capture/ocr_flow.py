"""Screen-region OCR, start to end: freeze the screen, let the user pick a region, have the model
transcribe the crop, put the text on the clipboard. `OcrFlow` shows state and emits intent;
`OcrEngineBridge` turns its requests into engine-client calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from PIL import Image
from PySide6 import QtCore, QtGui

from app.capture.geometry import Rect
from app.capture.region_picker import RegionPicker
from app.capture.screenshot import MonitorShot, grab_desktop
from app.engine_client import ChatResult, EngineClient
from engine import SamplingParams
from engine.ocr import MAX_OCR_TOKENS, OCR_PROMPT, ocr_beams, reads_by_lines
from engine.ocr_lines import join_readings, reading_pieces

log = logging.getLogger(__name__)

# greedy: a transcription has one right answer; the cap keeps a runaway reply bounded
OCR_PARAMS = SamplingParams(temperature=0.0, max_new_tokens=MAX_OCR_TOKENS)


def grab_current_desktop() -> list[MonitorShot]:
    """Screenshots of Qt's screens, by whatever means this session allows."""
    geometries = [s.geometry() for s in QtGui.QGuiApplication.screens()]
    return grab_desktop([Rect(g.x(), g.y(), g.width(), g.height()) for g in geometries])


class OcrFlow(QtCore.QObject):
    """One capture at a time: screenshot -> region picker -> transcription -> clipboard."""

    capture_started = QtCore.Signal()
    transcription_requested = QtCore.Signal(object)  # np.ndarray [h, w, 3] uint8, the crop
    text_copied = QtCore.Signal(str, object)  # text now on the clipboard, the crop
    capture_failed = QtCore.Signal(str)  # user-facing reason
    capture_cancelled = QtCore.Signal()

    def __init__(
        self,
        grab: Callable[[], list[MonitorShot]] = grab_current_desktop,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.grab = grab
        self.picker: RegionPicker | None = None
        self.crop: np.ndarray | None = None
        self.is_busy = False

    @QtCore.Slot()
    def start(self) -> None:
        """Freeze the screen and show the picker; ignored while a capture is under way."""
        if self.is_busy:
            log.info("a capture is already under way")
            return
        try:
            shots = self.grab()
            self.picker = RegionPicker(shots)
        except (RuntimeError, ValueError) as exc:
            self._fail(f"Cannot capture the screen: {exc}")
            return
        self.is_busy = True
        self.picker.region_selected.connect(self._on_region_selected)
        self.picker.selection_cancelled.connect(self._on_selection_cancelled)
        self.picker.start()
        self.capture_started.emit()

    @QtCore.Slot(object)
    def _on_region_selected(self, crop: np.ndarray) -> None:
        self.crop = crop
        self.transcription_requested.emit(crop)

    @QtCore.Slot()
    def _on_selection_cancelled(self) -> None:
        self.is_busy = False
        self.picker = None
        self.capture_cancelled.emit()

    def on_transcribed(self, text: str) -> None:
        """The model's transcription of the crop: copy it, unless there is none."""
        self.is_busy = False
        self.picker = None
        text = text.strip()
        if not text:
            self._fail("No text was found in the selected region.")
            return
        QtGui.QGuiApplication.clipboard().setText(text)
        log.info("copied %d characters", len(text))
        self.text_copied.emit(text, self.crop)

    def on_transcription_cancelled(self) -> None:
        self.is_busy = False
        self.picker = None
        log.info("transcription cancelled")
        self.capture_cancelled.emit()

    def on_transcription_failed(self, message: str) -> None:
        self.is_busy = False
        self.picker = None
        self._fail(f"The model could not read the region: {message}")

    def _fail(self, message: str) -> None:
        log.warning("%s", message)
        self.is_busy = False
        self.capture_failed.emit(message)


class OcrEngineBridge(QtCore.QObject):
    """Sends each crop to a fresh engine session (no conversation) and returns the reply.

    With the embedded default model the crop is read piece by piece (`engine.ocr_lines`: its
    bands of text lines, a band cut where its parts stand far apart, as `infinitevl ocr` does:
    that model reads a line far better than a page), one request after the other, and the
    replies are joined; any other model reads the whole crop at once. Each
    read takes the beams `engine.ocr.ocr_beams` gives the model (beam search for the embedded
    one), as `infinitevl ocr` does.
    """

    progress = QtCore.Signal(int, int)  # pieces read so far (from 1), pieces in the crop

    def __init__(
        self,
        flow: OcrFlow,
        client: EngineClient,
        params: SamplingParams = OCR_PARAMS,
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._flow = flow
        self._client = client
        self._params = params
        self._request: int | None = None
        self._is_cancelling = False
        self._bands: list[np.ndarray] = []
        self._lines: list[int] = []  # the text line (band) of each of _bands
        self._band_params = OCR_PARAMS
        self._texts: list[str] = []
        self._connect()

    def _connect(self) -> None:
        self._flow.transcription_requested.connect(self._on_transcription_requested)
        self._client.generation_finished.connect(self._on_generation_finished)
        self._client.generation_failed.connect(self._on_generation_failed)

    @QtCore.Slot()
    def cancel(self) -> None:
        """Stop the running transcription; the flow then reports capture_cancelled."""
        if self._request is not None:
            self._is_cancelling = True
            self._client.cancel(self._request)

    @QtCore.Slot(object)
    def _on_transcription_requested(self, crop: np.ndarray) -> None:
        self._is_cancelling = False
        info = self._client.model_info
        if info is not None and reads_by_lines(info):
            pieces = reading_pieces(Image.fromarray(crop))
            self._bands = [np.array(piece.image) for piece in pieces]
            self._lines = [piece.line for piece in pieces]
        else:
            self._bands, self._lines = [crop], [0]
        beams = 1 if info is None else ocr_beams(info)
        self._band_params = replace(self._params, num_beams=beams)
        self._texts = []
        log.info("transcribing a %dx%d crop in %d band(s)", *crop.shape[1::-1], len(self._bands))
        self._ask_next()

    def _ask_next(self) -> None:
        if self._texts:  # the first band shows as the reading of the region itself
            self.progress.emit(len(self._texts), len(self._bands))
        band = self._bands[len(self._texts)]
        self._request = self._client.ask_forked(None, OCR_PROMPT, (band,), self._band_params)

    @QtCore.Slot(int, object)
    def _on_generation_finished(self, request_id: int, result: ChatResult) -> None:
        if request_id == self._request:
            self._request = None
            if self._is_cancelling or result.stats.cancelled:
                self._flow.on_transcription_cancelled()
                return
            self._texts.append(result.text.strip())
            if len(self._texts) < len(self._bands):
                self._ask_next()
            else:
                self._flow.on_transcribed(join_readings(self._lines, self._texts))

    @QtCore.Slot(int, str)
    def _on_generation_failed(self, request_id: int, message: str) -> None:
        if request_id == self._request:
            self._request = None
            if self._is_cancelling:
                self._flow.on_transcription_cancelled()
            else:
                self._flow.on_transcription_failed(message)
