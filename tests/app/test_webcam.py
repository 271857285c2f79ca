"""The webcam: frame sampling arithmetic, frame conversion, the pane on a fake camera, and frames
streamed into the real tiny engine with a forked question that leaves the stream untouched."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PySide6 import QtGui

from app.webcam.camera import camera_unavailable_reason, qimage_to_rgb
from app.webcam.frame_sampler import FrameSampler
from app.webcam.pane import rgb_to_qimage


def _run(sampler: FrameSampler, times: list[float]) -> list[float]:
    return [t for t in times if sampler.offer(t, t)]


def test_sampler_keeps_the_rate_of_a_faster_camera() -> None:
    # GIVEN a 30 fps camera for 10 s WHEN sampled at 4 Hz THEN 40 frames, evenly spread
    sampler: FrameSampler[float] = FrameSampler(4.0, max_pending=1000)
    kept = _run(sampler, [i / 30 for i in range(300)])
    assert len(kept) == 40
    gaps = np.diff(kept)
    assert gaps.min() >= 0.2 and gaps.max() <= 0.3 + 1e-9
    assert sampler.kept == 40 and sampler.dropped == 0


def test_sampler_with_jittery_timestamps_keeps_the_average_rate() -> None:
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.02, 0.05, size=600))  # ~29 fps with jitter, ~21 s
    sampler: FrameSampler[float] = FrameSampler(2.0, max_pending=1000)
    kept = _run(sampler, list(times))
    assert abs(len(kept) - 2.0 * (times[-1] - times[0])) <= 1


def test_sampler_restarts_after_a_gap_instead_of_bursting() -> None:
    sampler: FrameSampler[float] = FrameSampler(1.0, max_pending=100)
    kept = _run(sampler, [0.0, 0.5, 1.0, 10.0, 10.2, 10.5, 11.0, 11.1])
    assert kept == [0.0, 1.0, 10.0, 11.0]


def test_sampler_slower_camera_keeps_every_frame() -> None:
    sampler: FrameSampler[float] = FrameSampler(10.0, max_pending=100)
    assert _run(sampler, [0.0, 0.5, 1.0, 1.5]) == [0.0, 0.5, 1.0, 1.5]


def test_sampler_queue_drops_the_oldest_when_full() -> None:
    sampler: FrameSampler[int] = FrameSampler(1.0, max_pending=3)
    for i in range(5):
        assert sampler.offer(i, float(i))
    assert sampler.take() == [2, 3, 4]
    assert sampler.dropped == 2 and sampler.num_pending == 0


def test_sampler_rate_change_and_bounds() -> None:
    sampler: FrameSampler[float] = FrameSampler(1.0)
    assert sampler.offer(0.0, 0.0) and not sampler.is_due(0.5)
    sampler.set_rate(4.0)
    assert sampler.is_due(0.5) and sampler.period == 0.25
    with pytest.raises(ValueError, match="outside"):
        sampler.set_rate(0.0)
    with pytest.raises(ValueError, match="outside"):
        FrameSampler(100.0)


@pytest.mark.gui
def test_qimage_round_trip_with_row_padding(qapp) -> None:
    # 33 pixels of RGB888 are 99 bytes, padded to 100 per row inside the QImage
    frame = np.random.default_rng(1).integers(0, 256, size=(7, 33, 3), dtype=np.uint8)
    np.testing.assert_array_equal(qimage_to_rgb(rgb_to_qimage(frame)), frame)
    argb = rgb_to_qimage(frame).convertToFormat(QtGui.QImage.Format.Format_ARGB32)
    np.testing.assert_array_equal(qimage_to_rgb(argb), frame)


@pytest.mark.gui
def test_no_camera_is_a_message(qapp) -> None:
    from PySide6.QtMultimedia import QMediaDevices

    if QMediaDevices.videoInputs():
        pytest.skip("this machine has a camera")
    assert "No camera found" in (camera_unavailable_reason() or "")


class FakeCamera:
    """A FrameSource of synthetic frames: frame k is a flat colour with k in its first pixel."""

    name = "fake camera"

    def __init__(self, size: tuple[int, int] = (48, 64)) -> None:
        self.size = size
        self.on_frame: Callable | None = None
        self.count = 0

    def start(self, on_frame: Callable, on_error: Callable) -> None:
        self.on_frame = on_frame

    def stop(self) -> None:
        self.on_frame = None

    def frame(self, k: int) -> np.ndarray:
        image = np.full((*self.size, 3), (k * 37) % 256, dtype=np.uint8)
        image[0, 0] = (k, 0, 0)
        return image

    def emit(self, t: float) -> None:
        assert self.on_frame is not None, "the camera was not started"
        self.on_frame(rgb_to_qimage(self.frame(self.count)), t)
        self.count += 1


@pytest.mark.gui
def test_pane_samples_frames_and_waits_for_the_engine(qtbot) -> None:
    from app.webcam.pane import WebcamPane

    camera = FakeCamera()
    pane = WebcamPane(lambda: camera)
    qtbot.addWidget(pane)
    batches: list[list[np.ndarray]] = []
    pane.frames_sampled.connect(batches.append)
    pane.rate_spin.setValue(2.0)
    assert pane.start_camera() and pane.camera_button.text() == "Stop camera"
    # WHEN 3 s of a 10 fps camera arrive while the engine never answers
    for i in range(30):
        camera.emit(i / 10)
    # THEN the first sampled frame went out at once, the other 5 wait for the engine
    assert [len(b) for b in batches] == [1]
    assert batches[0][0][0, 0, 0] == 0 and pane.sampler.num_pending == 5
    assert not pane.view.pixmap().isNull()
    # WHEN the engine has taken the first batch THEN the waiting frames go, in order
    pane.on_frames_fed(1)
    assert [b[0, 0, 0] for b in batches[1]] == [5, 10, 15, 20, 25]
    pane.on_frames_fed(5)
    assert "6 frames in memory" in pane.status.text()
    pane.stop_camera()
    assert camera.on_frame is None and pane.camera_button.text() == "Start camera"


@pytest.mark.gui
def test_pane_without_a_camera_shows_why(qtbot) -> None:
    from app.webcam.pane import WebcamPane

    pane = WebcamPane(lambda: "No camera found. Connect one and press Start again.")
    qtbot.addWidget(pane)
    pane.camera_button.click()
    assert pane.source is None and "No camera found" in pane.status.text()


def _wait_job(qtbot, client) -> object:  # noqa: ANN001
    ended: list[tuple[str, object]] = []
    client.job_finished.connect(lambda _id, result: ended.append(("finished", result)))
    client.job_failed.connect(lambda _id, message: ended.append(("failed", message)))
    qtbot.waitUntil(lambda: bool(ended), timeout=60000)
    if ended[0][0] == "failed":
        pytest.fail(f"feeding frames failed: {ended[0][1]}")
    return ended[0][1]


@pytest.mark.gui
@pytest.mark.slow
def test_frames_stream_into_the_engine_and_a_question_forks(make_window, tiny_factory, qtbot):
    from app.webcam.pane import WebcamPane

    # GIVEN the app on the tiny real engine with the webcam pane on a fake camera
    window = make_window(tiny_factory)
    client = window.engine_client
    qtbot.waitUntil(lambda: client.model_info is not None, timeout=30000)
    # the pane build() installed, on a fake camera
    camera = FakeCamera()
    pane = window.findChild(WebcamPane)
    pane.source_factory = lambda: camera
    pane.rate_spin.setValue(1.0)
    pane.start_camera()

    # WHEN two frames are streamed THEN each adds the same number of tokens to the state
    camera.emit(0.0)
    seen_0 = _wait_job(qtbot, client).status.tokens_seen
    camera.emit(1.0)
    seen_1 = _wait_job(qtbot, client).status.tokens_seen
    per_frame = seen_1 - seen_0
    assert per_frame > 0 and pane.frames_fed == 2

    # WHEN a question is asked THEN it is answered from a fork that saw the frames and it
    pane.question.setText("What colour is it?")
    with qtbot.waitSignal(client.generation_finished, timeout=60000) as blocker:
        pane.ask_button.click()
        assert not pane.ask_button.isEnabled()
    assert blocker.args[1].status.tokens_seen > seen_1
    assert pane.ask_button.isEnabled()

    # THEN the stream continues from its own state: the next frame adds exactly one frame's tokens
    camera.emit(2.0)
    seen_2 = _wait_job(qtbot, client).status.tokens_seen
    assert seen_2 == seen_1 + per_frame
    pane.stop_camera()

    # THEN the chat itself continues from the state holding the frames, in memory
    window.composer.set_text("What did the camera see?")
    with qtbot.waitSignal(client.generation_finished, timeout=60000) as blocker:
        window.composer.send_button.click()
    assert blocker.args[1].status.how == "memory"
    assert blocker.args[1].status.tokens_seen > seen_2


@pytest.mark.gui
def test_frames_are_shrunk_for_the_model(qapp) -> None:
    from app.webcam.camera import scaled_to_pixels

    big = rgb_to_qimage(np.zeros((720, 1280, 3), dtype=np.uint8))
    small = scaled_to_pixels(big, 448 * 448)
    assert small.width() * small.height() <= 448 * 448
    assert abs(small.width() / small.height() - 1280 / 720) < 0.01
    tiny = rgb_to_qimage(np.zeros((48, 64, 3), dtype=np.uint8))
    assert scaled_to_pixels(tiny, 448 * 448).size() == tiny.size()


@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 4.0, 10.0]),
    gaps=st.lists(st.floats(min_value=0.001, max_value=0.05), min_size=2, max_size=400),
)
def test_sampler_rate_holds_for_any_camera_timing(rate: float, gaps: list[float]) -> None:
    # GIVEN frames arriving with any gaps shorter than half the sampling period
    times = list(np.cumsum(gaps))
    sampler: FrameSampler[float] = FrameSampler(rate, max_pending=1000)
    kept = _run(sampler, times)
    span = times[-1] - times[0]
    # THEN the first frame is kept, and the count is the rate times the span, within one frame
    assert kept[0] == times[0]
    assert span * rate - 1 <= len(kept) <= span * rate + 1 + 1e-9
    # THEN the k-th kept frame never comes before k periods after the first
    assert all(t >= kept[0] + k / rate - 1e-9 for k, t in enumerate(kept))


@pytest.mark.gui
def test_qt_camera_source_delivers_sink_frames(qtbot) -> None:
    from PySide6 import QtMultimedia

    from app.webcam.camera import QtCameraSource

    # GIVEN the QtMultimedia source (no real camera here: frames are pushed into its sink)
    source = QtCameraSource()
    frames: list[np.ndarray] = []
    source.start(lambda image, t: frames.append(qimage_to_rgb(image)), lambda message: None)
    try:
        # WHEN the capture session delivers a video frame
        picture = np.zeros((48, 64, 3), dtype=np.uint8)
        picture[:, :32] = (10, 200, 30)
        source.video_sink.setVideoFrame(QtMultimedia.QVideoFrame(rgb_to_qimage(picture)))
        # THEN the pane's callback gets it as an RGB array
        qtbot.waitUntil(lambda: len(frames) == 1, timeout=2000)
        np.testing.assert_array_equal(frames[0], picture)
    finally:
        source.stop()
    # THEN a stopped source delivers nothing more
    source.video_sink.setVideoFrame(QtMultimedia.QVideoFrame(rgb_to_qimage(picture)))
    qtbot.wait(50)
    assert len(frames) == 1
