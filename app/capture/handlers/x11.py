"""Global hotkey on X11: XGrabKey of one combination on the root window, read by a QSocketNotifier.

The grab delivers only that key combination to us; no other keystroke is ever seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from PySide6 import QtCore
from Xlib import XK, X, error
from Xlib.display import Display

from app.capture.key_combo import KeyCombo
from app.capture.models import HotkeyBackend, HotkeyError

log = logging.getLogger(__name__)

_MODIFIER_MASKS = {
    "ctrl": X.ControlMask,
    "shift": X.ShiftMask,
    "alt": X.Mod1Mask,
    "super": X.Mod4Mask,
}
# Caps Lock and Num Lock (Mod2 on every common keymap) change the modifier state, so the same
# combination is grabbed once per lock state; these are still only presses of our one combination
_LOCK_VARIANTS = (0, X.LockMask, X.Mod2Mask, X.LockMask | X.Mod2Mask)


def modifier_mask(combo: KeyCombo) -> int:
    """The X modifier mask of the combination's modifiers."""
    mask = 0
    for name in combo.modifiers:
        mask |= _MODIFIER_MASKS[name]
    return mask


class X11KeyGrab(QtCore.QObject):
    """Grabs one key combination on the X root window of `display_name` (default: $DISPLAY)."""

    backend = HotkeyBackend.X11_GRAB

    def __init__(
        self, display_name: str | None = None, parent: QtCore.QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._display_name = display_name
        self._display: Display | None = None
        self._notifier: QtCore.QSocketNotifier | None = None
        self._keycode = 0
        self._mask = 0
        self._on_activated: Callable[[], None] | None = None

    def unavailable_reason(self) -> str | None:
        if self._display_name is None:
            if os.environ.get("WAYLAND_DISPLAY"):
                return "a Wayland session: an X grab would only see keys typed into X windows"
            if not os.environ.get("DISPLAY"):
                return "no X display ($DISPLAY is not set)"
        try:
            Display(self._display_name).close()
        except (error.DisplayError, error.ConnectionClosedError, OSError) as exc:
            return f"cannot open X display {self._display_name or os.environ.get('DISPLAY')}: {exc}"
        return None

    def register(self, combo: KeyCombo, on_activated: Callable[[], None]) -> None:
        self.unregister()
        try:
            display = Display(self._display_name)
        except (error.DisplayError, error.ConnectionClosedError, OSError) as exc:
            raise HotkeyError(f"cannot open the X display: {exc}") from exc
        keysym = XK.string_to_keysym(combo.keysym)
        keycode = display.keysym_to_keycode(keysym) if keysym else 0
        if keycode == 0:
            display.close()
            raise HotkeyError(f"the key {combo.key!r} of {combo} is not on this keyboard")
        mask = modifier_mask(combo)
        root = display.screen().root
        catch = error.CatchError(error.BadAccess)
        for lock in _LOCK_VARIANTS:
            root.grab_key(
                keycode, mask | lock, True, X.GrabModeAsync, X.GrabModeAsync, onerror=catch
            )
        display.sync()
        if catch.get_error() is not None:
            for lock in _LOCK_VARIANTS:
                root.ungrab_key(keycode, mask | lock)
            display.close()
            raise HotkeyError(f"{combo} is already taken by another application; choose another")
        self._display, self._keycode, self._mask = display, keycode, mask
        self._on_activated = on_activated
        self._notifier = QtCore.QSocketNotifier(display.fileno(), QtCore.QSocketNotifier.Type.Read)
        self._notifier.activated.connect(self._on_display_readable)
        log.info(
            "grabbed %s on X display %s (keycode %d)", combo, display.get_display_name(), keycode
        )

    def unregister(self) -> None:
        if self._display is None:
            return
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
            self._notifier = None
        root = self._display.screen().root
        for lock in _LOCK_VARIANTS:
            root.ungrab_key(self._keycode, self._mask | lock)
        self._display.sync()
        self._display.close()
        self._display = None
        log.info("released the X key grab")

    @QtCore.Slot()
    def _on_display_readable(self) -> None:
        if self._display is None:
            return
        pressed = False
        try:
            for _ in range(self._display.pending_events()):
                event = self._display.next_event()
                is_ours = event.type == X.KeyPress and event.detail == self._keycode
                if is_ours and (event.state & ~(X.LockMask | X.Mod2Mask)) == self._mask:
                    pressed = True
        except error.ConnectionClosedError as exc:
            # the X server went away (session ended): the grab went with it
            log.warning("X display closed; the hotkey is gone: %s", exc)
            if self._notifier is not None:
                self._notifier.setEnabled(False)
            self._notifier, self._display = None, None
            return
        if pressed and self._on_activated is not None:
            self._on_activated()
