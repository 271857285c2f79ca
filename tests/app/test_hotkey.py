"""The global hotkey: parsing key combinations, and on X11 (Xvfb) a grab of exactly one of them."""

from __future__ import annotations

import pytest

from app.capture.key_combo import KeyCombo, parse_key_combo
from app.capture.models import HotkeyError
from tests.app.xvfb_display import xvfb_display


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


@pytest.fixture
def x_display() -> str:
    with xvfb_display() as name:
        yield name


def _grab_by_other_client(display_name: str, combo: KeyCombo) -> bool:
    """True when a second X client can grab `combo`, i.e. nobody else holds it."""
    from Xlib import XK, X, error
    from Xlib.display import Display

    from app.capture.handlers.x11 import modifier_mask

    other = Display(display_name)
    try:
        keycode = other.keysym_to_keycode(XK.string_to_keysym(combo.key))
        catch = error.CatchError(error.BadAccess)
        root = other.screen().root
        root.grab_key(
            keycode, modifier_mask(combo), True, X.GrabModeAsync, X.GrabModeAsync, onerror=catch
        )
        other.sync()
        return catch.get_error() is None
    finally:
        other.close()


def _press(display_name: str, combo: KeyCombo) -> None:
    """Type `combo` through the XTEST extension, as a user's keyboard would."""
    from Xlib import XK, X
    from Xlib.display import Display
    from Xlib.ext import xtest

    names = {"ctrl": "Control_L", "alt": "Alt_L", "shift": "Shift_L", "super": "Super_L"}
    disp = Display(display_name)
    codes = [disp.keysym_to_keycode(XK.string_to_keysym(names[m])) for m in sorted(combo.modifiers)]
    codes.append(disp.keysym_to_keycode(XK.string_to_keysym(combo.key)))
    for code in codes:
        xtest.fake_input(disp, X.KeyPress, code)
    for code in reversed(codes):
        xtest.fake_input(disp, X.KeyRelease, code)
    disp.sync()
    disp.close()


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
        assert not _grab_by_other_client(x_display, combo)
        assert _grab_by_other_client(x_display, parse_key_combo("Ctrl+O"))
        assert _grab_by_other_client(x_display, parse_key_combo("Ctrl+Alt+P"))
        assert _grab_by_other_client(x_display, parse_key_combo("O"))
        # WHEN another combination is typed, nothing fires; WHEN ours is typed, it fires once
        _press(x_display, parse_key_combo("Ctrl+Alt+P"))
        qtbot.wait(150)
        assert presses == []
        _press(x_display, combo)
        qtbot.waitUntil(lambda: presses == [1], timeout=2000)
    finally:
        grab.unregister()
    # THEN after unregistering, another client can take the combination
    assert _grab_by_other_client(x_display, combo)


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

    assert "cannot open X display" in (X11KeyGrab(":987").unavailable_reason() or "")
