"""Screen-region OCR: logical-to-pixel mapping, the region picker over a real X screen (Xvfb),
and the whole flow with the real engine on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image
from PySide6 import QtCore, QtGui

from app.capture.geometry import (
    Rect,
    ScreenGeometry,
    logical_to_pixels,
    match_monitors,
    selection_rect,
)
from app.capture.screenshot import MonitorShot
from engine import SamplingParams
from engine.errors import InputError
from engine.ocr import EMBEDDED_OCR_BEAMS
from engine.ocr_lines import MAX_ENLARGE
from tests.app.fake_portal import FakePortal, private_bus_address
from tests.app.xvfb_display import grab_by_other_client, press_keys, xvfb_display

OFFSCREEN_SIZE = (800, 800)  # the Qt offscreen platform's one screen
REPO_ROOT = Path(__file__).resolve().parents[2]  # where `python -m engine` and `tests` import


def test_selection_rect_any_drag_direction() -> None:
    assert selection_rect(30, 40, 10, 5) == Rect(10, 5, 20, 35)
    assert selection_rect(10, 5, 30, 40) == Rect(10, 5, 20, 35)


def test_logical_to_pixels_hidpi_scales_by_image_ratio() -> None:
    # GIVEN a 2x screen: 1280x800 logical points shown by a 2560x1600 image
    screen = Rect(0, 0, 1280, 800)
    # WHEN 100.5..200.25 x 10..20 points are selected THEN the box widens to whole pixels
    box = logical_to_pixels(Rect(100.5, 10, 99.75, 10), screen, (2560, 1600))
    assert box == Rect(201, 20, 200, 20)


def test_logical_to_pixels_fractional_scale_on_second_screen() -> None:
    # GIVEN a 1.25x screen to the right of a 1920-wide one: 1536x864 points, 1920x1080 pixels
    screen = Rect(1920, 0, 1536, 864)
    box = logical_to_pixels(Rect(1920 + 400, 200, 80, 40), screen, (1920, 1080))
    assert box == Rect(500, 250, 100, 50)


def test_logical_to_pixels_clamps_to_the_screen() -> None:
    box = logical_to_pixels(Rect(-20, -20, 60, 50), Rect(0, 0, 100, 100), (100, 100))
    assert box == Rect(0, 0, 40, 30)


@pytest.mark.parametrize(
    "selection",
    [Rect(10, 10, 0, 30), Rect(10, 10, 30, 0), Rect(500, 500, 10, 10)],
    ids=["zero-width", "zero-height", "off-screen"],
)
def test_logical_to_pixels_rejects_an_empty_region(selection: Rect) -> None:
    with pytest.raises(InputError, match="selected region is empty"):
        logical_to_pixels(selection, Rect(0, 0, 100, 100), (100, 100))


def test_match_monitors_exact_on_x11_with_mixed_ratios() -> None:
    # GIVEN Qt 6 on X11: origins in native pixels, sizes logical; mss lists them in another order
    screens = [
        ScreenGeometry(Rect(0, 0, 1280, 800), 2.0),
        ScreenGeometry(Rect(2560, 0, 1920, 1080), 1.0),
    ]
    monitors = [Rect(2560, 0, 1920, 1080), Rect(0, 0, 2560, 1600)]
    assert match_monitors(screens, monitors) == [1, 0]


def test_match_monitors_falls_back_to_reading_order() -> None:
    # GIVEN macOS-like logical origins that are not the monitors' pixel origins
    screens = [
        ScreenGeometry(Rect(1440, 0, 1920, 1080), 1.0),
        ScreenGeometry(Rect(0, 0, 1440, 900), 2.0),
    ]
    monitors = [Rect(0, 0, 2880, 1800), Rect(2880, 0, 1920, 1080)]
    assert match_monitors(screens, monitors) == [1, 0]
    with pytest.raises(ValueError, match="2 Qt screens but 1 captured"):
        match_monitors(screens, monitors[:1])


def _synthetic_screen(width: int, height: int, seed: int = 7) -> np.ndarray:
    """Blocks of seeded random colours: every crop of it is distinguishable from its neighbours."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(blocks.repeat(8, 0).repeat(8, 1)[:height, :width])


def _show_on_x(display_name: str, image: np.ndarray) -> object:
    """Show `image` in a borderless window covering the X screen; returns the open connection.

    The image is the window's background pixmap, so the server repaints it by itself whenever
    a window above it goes away.
    """
    from Xlib import X
    from Xlib.display import Display

    disp = Display(display_name)
    screen = disp.screen()
    h, w, _ = image.shape
    pixmap = screen.root.create_pixmap(w, h, screen.root_depth)
    pixmap.put_pil_image(pixmap.create_gc(), 0, 0, Image.fromarray(image).convert("RGB"))
    window = screen.root.create_window(
        0,
        0,
        w,
        h,
        0,
        screen.root_depth,
        X.InputOutput,
        X.CopyFromParent,
        override_redirect=True,
        background_pixmap=pixmap,
    )
    window.map()
    disp.sync()
    return disp


@pytest.fixture
def x_screen_with_content() -> tuple[str, np.ndarray]:
    """A real X screen (Xvfb, as large as Qt's offscreen screen) showing known pixels."""
    with xvfb_display(*OFFSCREEN_SIZE) as name:
        content = _synthetic_screen(*OFFSCREEN_SIZE)
        connection = _show_on_x(name, content)
        yield name, content
        connection.close()


def _drag(qtbot, widget, start: tuple[int, int], end: tuple[int, int]) -> None:
    left = QtCore.Qt.MouseButton.LeftButton
    qtbot.mousePress(widget, left, pos=QtCore.QPoint(*start))
    qtbot.mouseMove(widget, QtCore.QPoint(*end))
    qtbot.mouseRelease(widget, left, pos=QtCore.QPoint(*end))


@pytest.mark.gui
def test_grab_monitors_captures_the_x_screen(x_screen_with_content) -> None:
    from app.capture.screenshot import grab_monitors

    display, content = x_screen_with_content
    shots = grab_monitors(display)
    assert [s.rect for s in shots] == [Rect(0, 0, *OFFSCREEN_SIZE)]
    np.testing.assert_array_equal(shots[0].image, content)


@pytest.mark.gui
def test_region_picker_crops_the_dragged_region(qtbot, x_screen_with_content) -> None:
    from app.capture.region_picker import RegionPicker
    from app.capture.screenshot import grab_monitors

    # GIVEN the frozen X screen in the picker's overlay
    display, content = x_screen_with_content
    picker = RegionPicker(grab_monitors(display))
    picker.start()
    overlay = picker.overlays[0]
    qtbot.waitExposed(overlay)
    # WHEN the user drags from (300, 120) up-left to (100, 50)
    with qtbot.waitSignal(picker.region_selected, timeout=2000) as blocker:
        _drag(qtbot, overlay, (300, 120), (100, 50))
    # THEN the crop is exactly those screen pixels and the overlay is gone
    np.testing.assert_array_equal(blocker.args[0], content[50:120, 100:300])
    assert not overlay.isVisible()


@pytest.mark.gui
def test_region_picker_hidpi_image_maps_points_to_pixels(qtbot) -> None:
    # GIVEN a screenshot with twice the screen's logical resolution (a 2x display)
    image = _synthetic_screen(2 * OFFSCREEN_SIZE[0], 2 * OFFSCREEN_SIZE[1])
    picker = _started_picker(image)
    overlay = picker.overlays[0]
    qtbot.waitExposed(overlay)
    with qtbot.waitSignal(picker.region_selected, timeout=2000) as blocker:
        _drag(qtbot, overlay, (100, 50), (300, 120))
    # THEN the logical 200x70 points are 400x140 image pixels
    np.testing.assert_array_equal(blocker.args[0], image[100:240, 200:600])


@pytest.mark.gui
def test_region_picker_zero_area_is_a_message_and_esc_cancels(qtbot) -> None:
    picker = _started_picker(_synthetic_screen(*OFFSCREEN_SIZE))
    overlay = picker.overlays[0]
    qtbot.waitExposed(overlay)
    # WHEN the user clicks without dragging THEN a clear message, no crop, the overlay stays
    with (
        qtbot.assertNotEmitted(picker.region_selected),
        qtbot.waitSignal(picker.selection_rejected, timeout=2000) as blocker,
    ):
        _drag(qtbot, overlay, (200, 200), (200, 200))
    assert "selected region is empty" in blocker.args[0]
    assert "selected region is empty" in overlay.message
    assert overlay.isVisible()
    # WHEN Esc is pressed THEN the picker is cancelled and closed
    with qtbot.waitSignal(picker.selection_cancelled, timeout=2000):
        qtbot.keyClick(overlay, QtCore.Qt.Key.Key_Escape)
    assert not overlay.isVisible()


def _started_picker(image: np.ndarray):  # noqa: ANN202
    """A started picker over one synthetic screenshot of the offscreen screen."""
    from app.capture.region_picker import RegionPicker

    h, w, _ = image.shape
    picker = RegionPicker([MonitorShot(Rect(0, 0, w, h), image)], QtGui.QGuiApplication.screens())
    picker.start()
    return picker


class SpyEngine:
    """The real tiny engine, recording what each new session is asked (prompt and images)."""

    def __init__(self, engine: object) -> None:
        self._engine = engine
        self.asked: list[tuple[str, list[np.ndarray]]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def new_session(self, *args: object, **kwargs: object) -> object:
        session = self._engine.new_session(*args, **kwargs)
        real_add = session.add_user_message

        def add_user_message(text: str, images=(), cancel=None) -> None:  # noqa: ANN001
            self.asked.append((text, [np.asarray(i) for i in images]))
            real_add(text, images=images, cancel=cancel)

        session.add_user_message = add_user_message
        return session


@pytest.fixture
def spy_engine(tiny_engine) -> SpyEngine:
    return SpyEngine(tiny_engine)


@pytest.mark.gui
def test_ocr_region_real_engine_clipboard_and_send_to_chat(
    make_window, spy_engine, qtbot, x_screen_with_content
) -> None:
    from app.capture.ocr_flow import OCR_PROMPT, OcrEngineBridge, OcrFlow
    from app.capture.result_popup import OcrResultPopup
    from app.capture.screenshot import grab_monitors

    # GIVEN the app on the real tiny engine, and known content on a real X screen
    display, content = x_screen_with_content
    window = make_window(lambda path, device, quant: spy_engine)
    client = window.engine_client
    qtbot.waitUntil(lambda: client.model_info is not None, timeout=30000)
    flow = OcrFlow(grab=lambda: grab_monitors(display))
    # the tiny random model's plain greedy reply is only newlines ("no text"); a repetition
    # penalty makes it write other bytes, so the clipboard path runs on a real reply
    params = SamplingParams(repetition_penalty=5.0, max_new_tokens=12)
    OcrEngineBridge(flow, client, params, parent=flow)
    popup = OcrResultPopup()
    qtbot.addWidget(popup)
    flow.text_copied.connect(popup.show_copied)
    popup.send_to_chat_requested.connect(window.attach_image)
    QtGui.QGuiApplication.clipboard().setText("before")

    # WHEN the capture starts and the user drags over the frozen screen
    flow.start()
    overlay = flow.picker.overlays[0]
    qtbot.waitExposed(overlay)
    with qtbot.waitSignal(client.generation_finished, timeout=60000) as finished:
        _drag(qtbot, overlay, (100, 50), (300, 120))
    reply = finished.args[1].text.strip()

    # THEN the engine was asked to read exactly the dragged pixels, and its text was copied
    assert len(spy_engine.asked) == 1
    prompt, images = spy_engine.asked[0]
    assert prompt == OCR_PROMPT
    np.testing.assert_array_equal(images[0], content[50:120, 100:300])
    assert reply, "the sampled reply of the tiny model should hold some text"
    assert QtGui.QGuiApplication.clipboard().text() == reply
    assert popup.isVisible() and f"Copied {len(reply)} characters" in popup.title.text()
    assert not flow.is_busy
    # WHEN "Send capture to chat" is clicked THEN the capture is in the chat's composer
    popup.send_button.click()
    assert window.composer.thumbnail_count() == 1
    np.testing.assert_array_equal(window.composer.images[0], content[50:120, 100:300])


@pytest.mark.gui
def test_capture_failure_is_a_message(qtbot) -> None:
    from app.capture.ocr_flow import OcrFlow

    def no_screen() -> list[MonitorShot]:
        raise RuntimeError("XGetImage() failed")

    flow = OcrFlow(grab=no_screen)
    with qtbot.waitSignal(flow.capture_failed, timeout=1000) as blocker:
        flow.start()
    assert "Cannot capture the screen: XGetImage() failed" in blocker.args[0]
    assert not flow.is_busy
    # an empty transcription copies nothing and says so
    flow.is_busy = True
    with qtbot.waitSignal(flow.capture_failed, timeout=1000) as blocker:
        flow.on_transcribed("  \n")
    assert blocker.args[0] == "No text was found in the selected region."


@pytest.mark.gui
def test_hotkey_on_x_starts_the_capture_in_the_app(
    make_window, tiny_factory, qtbot, x_screen_with_content, monkeypatch
) -> None:
    from app.capture.key_combo import parse_key_combo
    from app.capture.main import CaptureFeature
    from app.capture.models import HotkeyBackend

    # GIVEN the app started in an X session (the Xvfb screen): build() installs capture
    display, _ = x_screen_with_content
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    window = make_window(tiny_factory)
    feature = window.findChild(CaptureFeature)
    try:
        assert feature.hotkey is not None and feature.hotkey.backend is HotkeyBackend.X11_GRAB
        assert feature.hotkey_status == "Ctrl+Alt+O reads a screen region."
        # WHEN the user types the hotkey THEN the frozen screen overlay appears
        with qtbot.waitSignal(feature.flow.capture_started, timeout=3000):
            press_keys(display, feature.hotkey_combo)
        overlay = feature.flow.picker.overlays[0]
        qtbot.waitExposed(overlay)
        # WHEN Esc is pressed THEN it is cancelled and a new capture may start
        with qtbot.waitSignal(feature.flow.capture_cancelled, timeout=2000):
            qtbot.keyClick(overlay, QtCore.Qt.Key.Key_Escape)
        assert not feature.flow.is_busy
        # WHEN the hotkey setting changes THEN the new combination is grabbed, the old freed
        window.settings.set("hotkey", "Ctrl+Shift+F9")
        window.settings_changed.emit()
        assert feature.hotkey_status == "Ctrl+Shift+F9 reads a screen region."
        assert grab_by_other_client(display, parse_key_combo("Ctrl+Alt+O"))
        assert not grab_by_other_client(display, parse_key_combo("Ctrl+Shift+F9"))
    finally:
        feature.release_hotkey()


def test_register_hotkey_falls_back_with_reasons() -> None:
    from app.capture.main import register_hotkey
    from app.capture.models import HotkeyBackend, HotkeyError

    class Unavailable:
        backend = HotkeyBackend.X11_GRAB

        def unavailable_reason(self) -> str:
            return "no X display"

    class Refusing:
        backend = HotkeyBackend.X11_GRAB

        def unavailable_reason(self) -> None:
            return None

        def register(self, combo: object, on_activated: object) -> None:
            raise HotkeyError("Ctrl+Alt+O is already taken")

    handler, line = register_hotkey("Ctrl+Alt+O", lambda: None, [Unavailable(), Refusing()])
    assert handler is None
    assert "no X display" in line and "already taken" in line
    assert "infinitevl ocr --region" in line
    handler, line = register_hotkey("Ctrl+Nope", lambda: None, [])
    assert handler is None and "unknown key 'Nope'" in line


@pytest.mark.gui
def test_ocr_command_copies_and_prints_the_region(
    tiny_factory, qtbot, x_screen_with_content, tmp_path, capsys
) -> None:
    from app.capture.screenshot import grab_monitors
    from app.ocr_command import EXIT_OK, build_ocr_run, parse_args

    # GIVEN `infinitevl ocr --region` on the Xvfb screen (the tiny model stands in for --model)
    args = parse_args(["--region", "--device", "cpu"])
    display, content = x_screen_with_content
    run = build_ocr_run(
        args.model,
        args.device,
        tmp_path,
        tiny_factory,
        grab=lambda: grab_monitors(display),
        params=SamplingParams(repetition_penalty=5.0, max_new_tokens=8),
    )
    try:
        run.flow.start()
        overlay = run.flow.picker.overlays[0]
        qtbot.waitExposed(overlay)
        # WHEN a region is dragged THEN its text is on the clipboard and stdout, exit code 0
        with qtbot.waitSignal(run.flow.text_copied, timeout=60000):
            _drag(qtbot, overlay, (10, 10), (90, 40))
        assert run.exit_code == EXIT_OK and run.text
        assert QtGui.QGuiApplication.clipboard().text() == run.text
        assert capsys.readouterr().out == run.text + "\n"
        # the command has no chat to send to: no button that could do nothing
        assert run.popup.isVisible() and not run.popup.send_button.isVisible()
        with qtbot.waitSignal(run.popup.dismissed, timeout=1000):
            run.popup.close_button.click()
    finally:
        run.client.shutdown()


def test_ocr_command_needs_region(capsys) -> None:
    from app.ocr_command import parse_args

    with pytest.raises(SystemExit):
        parse_args([])
    assert "--region" in capsys.readouterr().err


@pytest.fixture
def private_bus() -> str:
    with private_bus_address() as address:
        yield address


def test_split_desktop_cuts_one_image_into_screens() -> None:
    from app.capture.geometry import split_desktop

    # GIVEN two 2x screens side by side (logical 1280x800 each) in a 5120x1600 image
    screens = [Rect(1280, 0, 1280, 800), Rect(0, 0, 1280, 800)]
    assert split_desktop((5120, 1600), screens) == [
        Rect(2560, 0, 2560, 1600),
        Rect(0, 0, 2560, 1600),
    ]
    with pytest.raises(ValueError, match="no screens"):
        split_desktop((10, 10), [])


def test_wayland_screenshot_through_the_portal(private_bus: str, tmp_path) -> None:
    from app.capture.screenshot import grab_through_portal

    # GIVEN a desktop portal that saves a 2x screenshot of two screens to a file
    desktop = _synthetic_screen(1600, 600)
    saved = tmp_path / "Screenshot.png"
    Image.fromarray(desktop).save(saved)
    portal = FakePortal(private_bus)
    portal.screenshot_uri = saved.as_uri()
    try:
        # WHEN the screen is frozen on Wayland
        shots = grab_through_portal([Rect(0, 0, 400, 300), Rect(400, 0, 400, 300)], private_bus)
    finally:
        portal.close()
    # THEN each screen gets its half of the image, and the portal's file is gone
    np.testing.assert_array_equal(shots[0].image, desktop[:, :800])
    np.testing.assert_array_equal(shots[1].image, desktop[:, 800:])
    assert not saved.exists()


def test_wayland_screenshot_declined_is_a_message(private_bus: str) -> None:
    from app.capture.screenshot import grab_through_portal

    portal = FakePortal(private_bus, accept=False)
    try:
        with pytest.raises(
            RuntimeError, match="screenshot portal failed: Screenshot: the user declined"
        ):
            grab_through_portal([Rect(0, 0, 400, 300)], private_bus)
    finally:
        portal.close()


def test_wayland_screenshot_without_a_file_is_a_message(private_bus: str) -> None:
    from app.capture.screenshot import grab_through_portal

    portal = FakePortal(private_bus)
    portal.screenshot_uri = "https://example.org/shot.png"
    try:
        with pytest.raises(RuntimeError, match="not a file"):
            grab_through_portal([Rect(0, 0, 400, 300)], private_bus)
    finally:
        portal.close()


@pytest.mark.gui
def test_region_picker_two_screens_mixed_hidpi(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.app import multiscreen_picker

    # GIVEN Qt's offscreen platform with a 2x screen and a 1x screen (its own process)
    config = tmp_path / "screens.json"
    config.write_text(json.dumps(multiscreen_picker.SCREENS))
    env = {**os.environ, "QT_QPA_PLATFORM": f"offscreen:configfile={config}"}
    # WHEN a region is dragged on each screen's overlay
    out = subprocess.run(
        [sys.executable, "-m", "tests.app.multiscreen_picker"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    # THEN each overlay covers its screen and crops that screen's physical pixels
    assert results["left"] == {
        "screen": "left",
        "overlay_size": [640, 400],
        "crop_shape": [140, 400, 3],
        "equal": True,
    }
    assert results["right"] == {
        "screen": "right",
        "overlay_size": [800, 600],
        "crop_shape": [50, 100, 3],
        "equal": True,
    }


@pytest.mark.gui
def test_ocr_cancel_while_reading(make_window, tiny_factory, qtbot) -> None:
    from app.capture.main import CaptureFeature

    # GIVEN the app's capture on the tiny real engine and a frozen (synthetic) screen
    window = make_window(tiny_factory)
    qtbot.waitUntil(lambda: window.engine_client.model_info is not None, timeout=30000)
    feature = window.findChild(CaptureFeature)
    screen = _synthetic_screen(*OFFSCREEN_SIZE)
    feature.flow.grab = lambda: [MonitorShot(Rect(0, 0, *OFFSCREEN_SIZE), screen)]
    QtGui.QGuiApplication.clipboard().setText("kept")
    feature.flow.start()
    overlay = feature.flow.picker.overlays[0]
    qtbot.waitExposed(overlay)
    # WHEN a region is picked THEN the popup says it is being read, with Cancel
    _drag(qtbot, overlay, (10, 10), (200, 100))
    assert feature.popup.isVisible() and feature.popup.is_reading
    assert feature.popup.title.text() == "Reading the selected region…"
    assert feature.popup.capture_view.pixmap().size() == QtCore.QSize(190, 90)
    assert feature.popup.close_button.text() == "Cancel"
    # WHEN Cancel is clicked THEN the capture ends cancelled and the clipboard is untouched
    with qtbot.waitSignal(feature.flow.capture_cancelled, timeout=30000):
        feature.popup.close_button.click()
    assert not feature.flow.is_busy and not feature.popup.isVisible()
    assert QtGui.QGuiApplication.clipboard().text() == "kept"


def _wait_for_overlay(display: str, content: np.ndarray, timeout: float = 30.0) -> None:
    """Until the X screen no longer shows `content` as is: the dimmed overlay is up."""
    import time

    from app.capture.screenshot import grab_monitors

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not np.array_equal(grab_monitors(display)[0].image, content):
            return
        time.sleep(0.1)
    pytest.fail("the capture overlay did not appear on the X screen")


def _x_pointer(display: str, events: list[tuple]) -> None:
    """Move and click the X pointer through XTEST, as the user's mouse would."""
    from Xlib import X
    from Xlib.display import Display
    from Xlib.ext import xtest

    disp = Display(display)
    for kind, *args in events:
        if kind == "move":
            xtest.fake_input(disp, X.MotionNotify, x=args[0], y=args[1])
        else:
            xtest.fake_input(disp, X.ButtonPress if kind == "press" else X.ButtonRelease, 1)
        disp.sync()
    disp.close()


@pytest.mark.gui
@pytest.mark.slow
def test_ocr_command_on_a_real_x_screen(x_screen_with_content, tiny_checkpoint, tmp_path) -> None:
    import os
    import subprocess
    import sys
    import time

    # GIVEN `infinitevl ocr --region --model <tiny>` on Qt's X11 platform, on the Xvfb screen
    display, content = x_screen_with_content
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "OMP_NUM_THREADS": "1"}
    env.pop("WAYLAND_DISPLAY", None)
    command = [sys.executable, "-m", "engine", "ocr", "--region", "--model", str(tiny_checkpoint)]
    command += ["--device", "cpu", "--max-new-tokens", "8"]

    # WHEN the user drags a region with the mouse THEN the model reads it and the command says
    # what it found (the tiny random model writes only newlines: "no text")
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as err:
        proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err)
    try:
        _wait_for_overlay(display, content)
        _x_pointer(display, [("move", 100, 50), ("press",), ("move", 300, 120), ("release",)])
        deadline = time.monotonic() + 60
        while "No text was found" not in errors.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, errors.read_text()
            time.sleep(0.2)
        assert "infinitevl ocr: No text was found in the selected region." in errors.read_text()
    finally:
        proc.kill()
        proc.wait(10)


@given(
    size=st.tuples(st.integers(200, 3000), st.integers(200, 2000)),
    scale=st.sampled_from([1.0, 1.25, 1.5, 2.0, 3.0]),
    corners=st.tuples(*[st.floats(0, 1, allow_nan=False) for _ in range(4)]),
)
def test_logical_to_pixels_covers_the_selection(size, scale: float, corners) -> None:
    # GIVEN a screen at (100, 50) and its image at `scale`, and a selection inside it
    w, h = size
    screen = Rect(100, 50, w, h)
    image = (round(w * scale), round(h * scale))
    x0, x1 = sorted((100 + corners[0] * w, 100 + corners[1] * w))
    y0, y1 = sorted((50 + corners[2] * h, 50 + corners[3] * h))
    assume(x1 - x0 >= 1 and y1 - y0 >= 1)
    box = logical_to_pixels(Rect(x0, y0, x1 - x0, y1 - y0), screen, image)
    # THEN the box lies in the image and covers the selection, less than 2 pixels wider each way
    sx, sy = image[0] / w, image[1] / h
    assert box.x >= 0 and box.y >= 0
    assert box.right <= image[0] and box.bottom <= image[1]
    assert box.x <= (x0 - 100) * sx + 1e-6 and box.right >= min(image[0], (x1 - 100) * sx) - 1e-6
    assert box.y <= (y0 - 50) * sy + 1e-6 and box.bottom >= min(image[1], (y1 - 50) * sy) - 1e-6
    assert box.width <= (x1 - x0) * sx + 2 and box.height <= (y1 - y0) * sy + 2


@pytest.mark.gui
def test_tray_and_menu_actions_start_a_capture(make_window, tiny_factory, qtbot) -> None:
    from app.capture.main import CaptureFeature

    # GIVEN the app (no desktop tray here: the tray's menu actions exist all the same)
    window = make_window(tiny_factory)
    feature = window.findChild(CaptureFeature)
    screen = _synthetic_screen(*OFFSCREEN_SIZE)
    feature.flow.grab = lambda: [MonitorShot(Rect(0, 0, *OFFSCREEN_SIZE), screen)]
    menu_action = (
        next(a for a in window.menuBar().actions() if a.text() == "&Capture").menu().actions()[0]
    )
    for action in (feature.tray.capture_action, menu_action):
        # WHEN "Read screen region" is chosen THEN the frozen screen is shown; Esc ends it,
        # though the window's own Esc shortcut (Stop reply) would take it otherwise
        with qtbot.waitSignal(feature.flow.capture_started, timeout=2000):
            action.trigger()
        overlay = feature.flow.picker.overlays[0]
        qtbot.waitExposed(overlay)
        with qtbot.waitSignal(feature.flow.capture_cancelled, timeout=2000):
            qtbot.keyClick(overlay, QtCore.Qt.Key.Key_Escape)


class _ClientStub(QtCore.QObject):
    """The engine client's OCR surface: records each crop asked about, replies when told."""

    generation_finished = QtCore.Signal(int, object)
    generation_failed = QtCore.Signal(int, str)

    def __init__(self, embedded: bool) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.model_info = SimpleNamespace(is_embedded_default=embedded)
        self.asked: list[np.ndarray] = []
        self.params: list[SamplingParams] = []
        self.cancelled: list[int] = []

    def ask_forked(self, conversation_id, text, images, params):  # type: ignore[no-untyped-def]
        self.asked.append(images[0])
        self.params.append(params)
        return len(self.asked)

    def cancel(self, request_id: int) -> None:
        self.cancelled.append(request_id)

    def reply(self, text: str, cancelled: bool = False) -> None:
        from types import SimpleNamespace

        result = SimpleNamespace(text=text, stats=SimpleNamespace(cancelled=cancelled))
        self.generation_finished.emit(len(self.asked), result)


def _three_lines() -> np.ndarray:
    from PIL import ImageDraw

    image = Image.new("RGB", (240, 130), "white")
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(["File Edit", "Total: 12", "Send"]):
        draw.text((10, 10 + 40 * i), text, fill="black")
    return np.array(image)


@pytest.mark.parametrize("embedded", [True, False])
def test_region_ocr_reads_band_by_band_with_the_embedded_model(qtbot, embedded: bool) -> None:
    from app.capture.ocr_flow import OcrEngineBridge, OcrFlow

    # GIVEN a crop of three lines of text, and the embedded model (or another) loaded
    from app.capture.result_popup import OcrResultPopup

    flow, client = OcrFlow(grab=list), _ClientStub(embedded)
    bridge = OcrEngineBridge(flow, client, parent=flow)
    popup = OcrResultPopup()
    qtbot.addWidget(popup)
    flow.transcription_requested.connect(popup.show_reading)
    bridge.progress.connect(popup.show_progress)
    steps: list[tuple[int, int]] = []
    bridge.progress.connect(lambda done, total: steps.append((done, total)))
    crop = _three_lines()
    # WHEN the crop is to be transcribed, and each request gets its reply
    with qtbot.waitSignal(flow.text_copied, timeout=1000) as copied:
        flow.transcription_requested.emit(crop)
        for i in range(3 if embedded else 1):
            assert len(client.asked) == i + 1  # one request at a time
            if embedded and i:  # the popup says which line the model is on
                assert popup.title.text().endswith(f"part {i + 1} of 3")
            client.reply(f"line {i}\n" if embedded else "all of it")
    # THEN the embedded model was asked about each band in order, whole width (PIL's default
    # font is small: each band enlarged alike, `engine.ocr_lines.enlarge_small_text`), and the
    # clipboard holds the replies joined; another model reads the crop whole
    if embedded:
        scale = client.asked[0].shape[1] / 240
        assert 1 < scale <= MAX_ENLARGE
        assert [a.shape[1] for a in client.asked] == [round(240 * scale)] * 3
        assert sum(a.shape[0] for a in client.asked) <= crop.shape[0] * scale + 3
        assert copied.args[0] == "line 0\nline 1\nline 2"
        assert steps == [(1, 3), (2, 3)]
        # each band by beam search, as `infinitevl ocr` reads with the embedded model
        assert [p.num_beams for p in client.params] == [EMBEDDED_OCR_BEAMS] * 3
    else:
        assert steps == []
        np.testing.assert_array_equal(client.asked[0], crop)
        assert copied.args[0] == "all of it"
        assert client.params[0].num_beams == 1
    assert QtGui.QGuiApplication.clipboard().text() == copied.args[0]


def test_region_ocr_cancel_between_bands_stops(qtbot) -> None:
    from app.capture.ocr_flow import OcrEngineBridge, OcrFlow

    flow, client = OcrFlow(grab=list), _ClientStub(embedded=True)
    bridge = OcrEngineBridge(flow, client, parent=flow)
    flow.transcription_requested.emit(_three_lines())
    client.reply("line 0")
    # WHEN the user cancels while the second band is read THEN no third band is asked for
    bridge.cancel()
    assert client.cancelled == [2]
    with qtbot.waitSignal(flow.capture_cancelled, timeout=1000):
        client.reply("", cancelled=True)
    assert len(client.asked) == 2
