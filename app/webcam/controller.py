"""Connects the webcam pane to the engine client: sampled frames go into the open conversation's
state (feed_frames), and a question is asked of a fork of that state (ask_forked), so the stream
continues untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from PySide6 import QtCore

from app.chat.window import MainWindow
from app.engine_client import ChatResult, EngineClient, JobResult
from app.webcam.camera import FrameSource
from app.webcam.pane import WebcamPane, default_source

log = logging.getLogger(__name__)


class WebcamController(QtCore.QObject):
    """One webcam pane and one engine client: one feed and one question in flight at most."""

    def __init__(
        self,
        pane: WebcamPane,
        client: EngineClient,
        conversation_id: Callable[[], int | None],
        parent: QtCore.QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._pane = pane
        self._client = client
        self._conversation_id = conversation_id
        self._feed: tuple[int, int] | None = None  # request id, frames in it
        self._question: int | None = None
        self._connect()

    def _connect(self) -> None:
        self._pane.frames_sampled.connect(self._on_frames_sampled)
        self._pane.question_asked.connect(self._on_question_asked)
        self._client.job_finished.connect(self._on_job_finished)
        self._client.job_failed.connect(self._on_job_failed)
        self._client.token_streamed.connect(self._on_token_streamed)
        self._client.generation_finished.connect(self._on_generation_finished)
        self._client.generation_failed.connect(self._on_generation_failed)

    @QtCore.Slot(object)
    def _on_frames_sampled(self, frames: list[np.ndarray]) -> None:
        conversation = self._conversation_id()
        problem = self._client.not_ready_reason(conversation)
        if problem is not None:
            self._pane.on_feed_failed(problem)
            return
        assert conversation is not None
        self._feed = (self._client.feed_frames(conversation, frames), len(frames))

    @QtCore.Slot(str, object)
    def _on_question_asked(self, text: str, frame: np.ndarray | None) -> None:
        conversation = self._conversation_id()
        problem = self._client.not_ready_reason(conversation)
        if problem is not None:
            self._pane.on_answer_failed(problem)
            return
        assert conversation is not None
        images = () if frame is None else (frame,)
        self._question = self._client.ask_forked(conversation, text, images)

    @QtCore.Slot(int, object)
    def _on_job_finished(self, request_id: int, result: JobResult) -> None:
        if self._feed is not None and request_id == self._feed[0]:
            count = self._feed[1]
            self._feed = None
            self._pane.on_frames_fed(count)

    @QtCore.Slot(int, str)
    def _on_job_failed(self, request_id: int, message: str) -> None:
        if self._feed is not None and request_id == self._feed[0]:
            self._feed = None
            self._pane.on_feed_failed(message)

    @QtCore.Slot(int, str)
    def _on_token_streamed(self, request_id: int, text: str) -> None:
        if request_id == self._question:
            self._pane.on_answer_streamed(text)

    @QtCore.Slot(int, object)
    def _on_generation_finished(self, request_id: int, result: ChatResult) -> None:
        if request_id == self._question:
            self._question = None
            self._pane.on_answer_finished()

    @QtCore.Slot(int, str)
    def _on_generation_failed(self, request_id: int, message: str) -> None:
        if request_id == self._question:
            self._question = None
            self._pane.on_answer_failed(message)


def install(
    window: MainWindow, source_factory: Callable[[], FrameSource | str] = default_source
) -> WebcamPane:
    """Dock a webcam pane in the main window, wired to its engine client and open conversation."""
    pane = WebcamPane(source_factory)
    WebcamController(pane, window.engine_client, lambda: window.current_conversation_id, pane)
    window.add_side_pane("Webcam", pane)
    app = QtCore.QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(pane.stop_camera)
    return pane
