"""The global hotkey: parsing key combinations, and on X11 (Xvfb) a grab of exactly one of them."""

from __future__ import annotations

import pytest
from PIL import Image

from app.capture.key_combo import KeyCombo, parse_key_combo
from app.capture.models import HotkeyError
from tests.app.fake_portal import FakePortal, private_bus_address
from tests.app.xvfb_display import grab_by_other_client, press_keys, xvfb_display


@pytest.mark.parametrize(
    ("text", "modifiers", "key"),
    [
        ("Ctrl+Alt+O", {"ctrl", "alt"}, "o"),
        ("super+shift+f9", {"super", "shift"}, "F9"),
        ("Print", set(), "Print"),
        ("Control + PrtSc", {"ctrl"}, "Print"),
        ("Meta+Space", {"super"}, "space"),
        ("Ctrl++", {"ctrl"}, "+"),
        ("Alt+1", {"alt"}, "1"),
    ],
    ids=["ctrl-alt-o", "lowercase-f9", "print", "aliases", "meta-space", "plus-key", "digit"],
)
def test_parse_key_combo(text: str, modifiers: set[str], key: str) -> None:
    assert parse_key_combo(text) == KeyCombo(frozenset(modifiers), key)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Ctrl+", "empty part"),
        ("Ctrl+Alt", "no key"),
        ("Hyper+O", "unknown modifier 'Hyper'"),
        ("Ctrl+Control+O", "twice"),
        ("Ctrl+F99", "unknown key 'F99'"),
        ("Ctrl+é", "unknown key 'é'"),
        ("Ctrl+!", "unknown key '!'"),
        ("Ctrl+Banana", "unknown key 'Banana'"),
    ],
)
def test_parse_key_combo_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_key_combo(text)


def test_key_combo_round_trips_through_text() -> None:
    combo = parse_key_combo("shift+ctrl+alt+super+p")
    assert str(combo) == "Ctrl+Alt+Shift+Super+P"
    assert parse_key_combo(str(combo)) == combo
    assert combo.portal_trigger() == "CTRL+ALT+SHIFT+LOGO+p"
    assert parse_key_combo("Ctrl++").portal_trigger() == "CTRL+plus"


@pytest.fixture
def x_display() -> str:
    with xvfb_display() as name:
        yield name


@pytest.mark.gui
def test_x11_grab_holds_only_its_combination(qtbot, x_display: str) -> None:
    from app.capture.handlers.x11 import X11KeyGrab

    # GIVEN a fresh X screen and our grab of Ctrl+Alt+O
    grab = X11KeyGrab(x_display)
    assert grab.unavailable_reason() is None
    presses: list[int] = []
    combo = parse_key_combo("Ctrl+Alt+O")
    grab.register(combo, lambda: presses.append(1))
    try:
        # THEN that exact combination is taken, and its neighbours are not
        assert not grab_by_other_client(x_display, combo)
        assert grab_by_other_client(x_display, parse_key_combo("Ctrl+O"))
        assert grab_by_other_client(x_display, parse_key_combo("Ctrl+Alt+P"))
        assert grab_by_other_client(x_display, parse_key_combo("O"))
        # WHEN another combination is typed, nothing fires; WHEN ours is typed, it fires once
        press_keys(x_display, parse_key_combo("Ctrl+Alt+P"))
        qtbot.wait(150)
        assert presses == []
        press_keys(x_display, combo)
        qtbot.waitUntil(lambda: presses == [1], timeout=2000)
    finally:
        grab.unregister()
    # THEN after unregistering, another client can take the combination
    assert grab_by_other_client(x_display, combo)


@pytest.mark.gui
@pytest.mark.parametrize("text", ["Ctrl++", "Super+Print", "Alt+F12", "Ctrl+Shift+/"])
def test_x11_grab_of_named_and_punctuation_keys(qtbot, x_display: str, text: str) -> None:
    from app.capture.handlers.x11 import X11KeyGrab

    grab, presses = X11KeyGrab(x_display), []
    combo = parse_key_combo(text)
    grab.register(combo, lambda: presses.append(1))
    try:
        assert not grab_by_other_client(x_display, combo)
        press_keys(x_display, combo)
        qtbot.waitUntil(lambda: presses == [1], timeout=2000)
    finally:
        grab.unregister()


@pytest.mark.gui
def test_x11_grab_reports_a_taken_combination(qtbot, x_display: str) -> None:
    from app.capture.handlers.x11 import X11KeyGrab

    first, second = X11KeyGrab(x_display), X11KeyGrab(x_display)
    combo = parse_key_combo("Ctrl+Shift+F9")
    first.register(combo, lambda: None)
    try:
        with pytest.raises(HotkeyError, match="already taken"):
            second.register(combo, lambda: None)
    finally:
        first.unregister()
    second.register(combo, lambda: None)
    second.unregister()


def test_x11_grab_reports_a_missing_display() -> None:
    from app.capture.handlers.x11 import X11KeyGrab

    grab = X11KeyGrab(":987")
    assert "cannot open X display" in (grab.unavailable_reason() or "")
    with pytest.raises(HotkeyError, match="cannot open the X display"):
        grab.register(parse_key_combo("Ctrl+Alt+O"), lambda: None)


@pytest.fixture
def private_bus() -> str:
    with private_bus_address() as address:
        yield address


def test_portal_without_a_bus_is_a_reason_and_a_hotkey_error(qapp) -> None:
    from app.capture.handlers.portal import PortalGlobalShortcut

    handler = PortalGlobalShortcut("unix:path=/nonexistent/bus")
    assert "cannot connect to the D-Bus session bus" in (handler.unavailable_reason() or "")
    with pytest.raises(HotkeyError, match="cannot connect to the D-Bus session bus"):
        handler.register(parse_key_combo("Ctrl+Alt+O"), lambda: None)


def test_portal_absent_is_a_reason(private_bus: str) -> None:
    from app.capture.handlers.portal import PortalGlobalShortcut

    reason = PortalGlobalShortcut(private_bus).unavailable_reason() or ""
    assert "offers no GlobalShortcuts" in reason


@pytest.mark.gui
def test_portal_binds_one_shortcut_and_reports_its_activation(qtbot, private_bus: str) -> None:
    from app.capture.handlers.portal import SHORTCUT_ID, PortalGlobalShortcut

    # GIVEN a desktop portal that offers GlobalShortcuts
    portal = FakePortal(private_bus)
    handler = PortalGlobalShortcut(private_bus)
    try:
        assert handler.unavailable_reason() is None
        presses: list[int] = []
        # WHEN Ctrl+Alt+O is registered THEN exactly one shortcut is asked for, with that trigger
        with qtbot.waitSignal(handler.bound, timeout=5000) as blocker:
            handler.register(parse_key_combo("Ctrl+Alt+O"), lambda: presses.append(1))
        assert blocker.args == ["Ctrl+Alt+O"]
        assert [sid for sid, _ in portal.bound[0]] == [SHORTCUT_ID]
        assert portal.bound[0][0][1]["preferred_trigger"] == ("s", "CTRL+ALT+o")
        # WHEN the portal reports another shortcut or another session THEN nothing fires
        portal.activate("something-else")
        portal.activate(SHORTCUT_ID, session="/org/freedesktop/portal/desktop/session/x/y")
        qtbot.wait(300)
        assert presses == []
        # WHEN ours fires THEN the callback runs once, on the GUI thread
        portal.activate(SHORTCUT_ID)
        qtbot.waitUntil(lambda: presses == [1], timeout=3000)
        session = portal.session
    finally:
        handler.unregister()
        portal.close()
    # THEN unregistering closed the portal session
    assert portal.closed == [session]


@pytest.mark.gui
def test_portal_declined_shortcut_is_reported(qtbot, private_bus: str) -> None:
    from app.capture.handlers.portal import PortalGlobalShortcut

    portal = FakePortal(private_bus, accept=False)
    handler = PortalGlobalShortcut(private_bus)
    try:
        with qtbot.waitSignal(handler.bind_failed, timeout=5000) as blocker:
            handler.register(parse_key_combo("Ctrl+Alt+O"), lambda: None)
        assert "the user declined" in blocker.args[0]
    finally:
        handler.unregister()
        portal.close()


@pytest.mark.gui
def test_app_on_wayland_binds_the_hotkey_through_the_portal(
    make_window, tiny_factory, qtbot, private_bus: str, monkeypatch, tmp_path
) -> None:
    from app.capture.main import CaptureFeature
    from app.capture.models import HotkeyBackend

    # GIVEN a Wayland session whose desktop portal offers GlobalShortcuts
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-test")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", private_bus)
    portal = FakePortal(private_bus)
    screenshot = tmp_path / "shot.png"
    Image.new("RGB", (800, 800), "white").save(screenshot)
    portal.screenshot_uri = screenshot.as_uri()
    try:
        # WHEN the app starts THEN the X grab is skipped and the portal is asked
        window = make_window(tiny_factory)
        feature = window.findChild(CaptureFeature)
        assert feature.hotkey.backend is HotkeyBackend.PORTAL
        if "bound by the desktop" not in feature.hotkey_status:
            with qtbot.waitSignal(feature.status_changed, timeout=5000):
                pass
        # THEN the status bar says which keys the desktop bound, and a press starts a capture
        assert feature.hotkey_status == "Ctrl+Alt+O reads a screen region (bound by the desktop)."
        # (the screen is frozen through the portal's Screenshot too, as on a real Wayland desktop)
        with qtbot.waitSignal(feature.flow.capture_started, timeout=3000):
            portal.activate("read-screen-region")
        assert feature.flow.picker.overlays[0].isVisible()
        feature.flow.picker.close()
    finally:
        window.findChild(CaptureFeature).release_hotkey()
        portal.close()
