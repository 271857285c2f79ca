"""The shapes shared by capture: hotkey backends in preference order, and the handler Protocol."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from app.capture.key_combo import KeyCombo


class HotkeyBackend(enum.Enum):
    """Ways to get a global hotkey, in the order capture/main.py tries them."""

    # a key grab on the X root window: only the one combination reaches us
    X11_GRAB = "x11"
    # xdg-desktop-portal GlobalShortcuts: the compositor binds the keys and reports each press
    PORTAL = "portal"


class HotkeyError(RuntimeError):
    """A hotkey that cannot be registered; the message says why and what to do instead."""


class HotkeyHandler(Protocol):
    """One platform's way to register a single global key combination."""

    backend: HotkeyBackend

    def unavailable_reason(self) -> str | None:
        """None when this backend can work in the running session, else why it cannot."""
        ...

    def register(self, combo: KeyCombo, on_activated: Callable[[], None]) -> None:
        """Register `combo`; `on_activated` then runs on the GUI thread at each press.

        Raises:
            HotkeyError: the combination is taken, or the backend refused it.
        """
        ...

    def unregister(self) -> None:
        """Release the combination; a no-op when nothing is registered."""
        ...
