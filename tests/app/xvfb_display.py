"""A private Xvfb screen for tests that need a real X server (key grabs, mss captures), and
X clients that probe key grabs and type keys through XTEST."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from app.capture.key_combo import KeyCombo


@contextmanager
def xvfb_display(width: int = 800, height: int = 600) -> Iterator[str]:
    """Yield the name (":N") of a fresh Xvfb display; skip the test when Xvfb is not installed."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (make system-deps installs it)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            exe,
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
            # without it the server resets whenever its last client disconnects, and a client
            # connecting meanwhile (a test's next step) gets "connection reset by peer"
            "-noreset",
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        if not number:
            pytest.fail(f"Xvfb exited with {proc.wait(5)} before naming its display")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(5)


def grab_by_other_client(display_name: str, combo: KeyCombo) -> bool:
    """True when a second X client can grab `combo`, i.e. nobody else holds it."""
    from Xlib import XK, X, error
    from Xlib.display import Display

    from app.capture.handlers.x11 import modifier_mask

    other = Display(display_name)
    try:
        keycode = other.keysym_to_keycode(XK.string_to_keysym(combo.keysym))
        catch = error.CatchError(error.BadAccess)
        root = other.screen().root
        root.grab_key(
            keycode, modifier_mask(combo), True, X.GrabModeAsync, X.GrabModeAsync, onerror=catch
        )
        other.sync()
        return catch.get_error() is None
    finally:
        other.close()


def press_keys(display_name: str, combo: KeyCombo) -> None:
    """Type `combo` through the XTEST extension, as a user's keyboard would."""
    from Xlib import XK, X
    from Xlib.display import Display
    from Xlib.ext import xtest

    names = {"ctrl": "Control_L", "alt": "Alt_L", "shift": "Shift_L", "super": "Super_L"}
    disp = Display(display_name)
    codes = [disp.keysym_to_keycode(XK.string_to_keysym(names[m])) for m in sorted(combo.modifiers)]
    codes.append(disp.keysym_to_keycode(XK.string_to_keysym(combo.keysym)))
    for code in codes:
        xtest.fake_input(disp, X.KeyPress, code)
    for code in reversed(codes):
        xtest.fake_input(disp, X.KeyRelease, code)
    disp.sync()
    disp.close()
