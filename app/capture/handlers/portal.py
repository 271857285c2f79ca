"""Global hotkey on Wayland: the xdg-desktop-portal GlobalShortcuts interface, over D-Bus.

The compositor owns the keyboard: we ask it to bind one shortcut (it may ask the user to confirm
or pick other keys) and it tells us when that shortcut fires; no other keystroke reaches us.
D-Bus goes through jeepney because PySide6's QtDBus cannot marshal BindShortcuts' a(sa{sv})
argument (docs/adr/002-global-hotkey.md). A background thread makes the requests, which may wait
on the user's answer, and listens for Activated; activations reach the GUI thread as a signal.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable

from jeepney import (
    DBusAddress,
    HeaderFields,
    MatchRule,
    MessageType,
    Properties,
    message_bus,
    new_method_call,
)
from jeepney.io.threading import DBusRouter, open_dbus_connection, open_dbus_router
from PySide6 import QtCore

from app.capture.key_combo import KeyCombo
from app.capture.models import HotkeyBackend, HotkeyError
from app.capture.portal_request import (
    CALL_TIMEOUT,
    PORTAL_BUS,
    PORTAL_PATH,
    PortalError,
    portal_address,
    portal_request,
)

log = logging.getLogger(__name__)

SHORTCUTS = "org.freedesktop.portal.GlobalShortcuts"
SESSION = "org.freedesktop.portal.Session"
SHORTCUT_ID = "read-screen-region"
ANSWER_TIMEOUT = 300.0  # seconds for the user to answer the compositor's dialog

_PORTAL = portal_address(SHORTCUTS)


class PortalGlobalShortcut(QtCore.QObject):
    """Binds one shortcut through the desktop portal on `bus` ("SESSION" or a D-Bus address)."""

    backend = HotkeyBackend.PORTAL
    bound = QtCore.Signal(str)  # how the compositor describes the keys it bound
    bind_failed = QtCore.Signal(str)  # why no shortcut was bound
    _activated = QtCore.Signal()  # emitted on the D-Bus thread, received on the GUI thread

    def __init__(self, bus: str = "SESSION", parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._bus = bus
        self._router: DBusRouter | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._session: str | None = None
        self._on_activated: Callable[[], None] | None = None
        self._activated.connect(self._on_portal_activated)

    def unavailable_reason(self) -> str | None:
        if self._bus == "SESSION" and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return "no D-Bus session bus ($DBUS_SESSION_BUS_ADDRESS is not set)"
        try:
            with open_dbus_router(self._bus) as router:
                reply = router.send_and_get_reply(Properties(_PORTAL).get("version"), timeout=5)
        except TimeoutError:
            return "the desktop portal does not answer"
        except (OSError, KeyError, ValueError) as exc:
            return f"cannot connect to the D-Bus session bus: {exc}"
        if reply.header.message_type == MessageType.error:
            detail = (
                reply.body[0] if reply.body else reply.header.fields.get(HeaderFields.error_name)
            )
            return f"the desktop portal offers no GlobalShortcuts ({detail})"
        return None

    def register(self, combo: KeyCombo, on_activated: Callable[[], None]) -> None:
        """Start binding `combo`; the outcome comes later as `bound` or `bind_failed`."""
        self.unregister()
        try:
            self._router = DBusRouter(open_dbus_connection(self._bus))
        except (OSError, KeyError, ValueError) as exc:
            raise HotkeyError(f"cannot connect to the D-Bus session bus: {exc}") from exc
        self._on_activated = on_activated
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._bind_and_listen, args=(self._router, combo), name="portal-shortcut"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("asked the desktop portal to bind %s", combo)

    def unregister(self) -> None:
        if self._router is None:
            return
        self._stop.set()
        if self._session is not None:
            close = new_method_call(DBusAddress(self._session, PORTAL_BUS, SESSION), "Close")
            try:
                self._router.send_and_get_reply(close, timeout=2)
            except (TimeoutError, OSError) as exc:
                log.warning("closing portal session %s: %s", self._session, exc)
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._router.close()
        self._router.conn.close()
        self._router, self._thread, self._session = None, None, None
        log.info("released the portal shortcut")

    @QtCore.Slot()
    def _on_portal_activated(self) -> None:
        if self._on_activated is not None:
            self._on_activated()

    def _bind_and_listen(self, router: DBusRouter, combo: KeyCombo) -> None:
        try:
            activations = MatchRule(
                type="signal", interface=SHORTCUTS, member="Activated", path=PORTAL_PATH
            )
            router.send_and_get_reply(message_bus.AddMatch(activations), timeout=CALL_TIMEOUT)
            with router.filter(activations, bufsize=16) as pressed:
                self._session = self._create_session(router)
                description = self._bind(router, self._session, combo)
                log.info("the portal bound %s as %r", combo, description)
                self.bound.emit(description)
                self._listen(pressed)
        except Exception as exc:  # thread boundary: a refusal is a message, never a crash
            if self._stop.is_set():
                return
            log.warning("the portal did not bind %s: %s", combo, exc)
            self.bind_failed.emit(str(exc))

    def _listen(self, pressed: queue.Queue) -> None:
        while not self._stop.is_set():
            try:
                signal = pressed.get(timeout=0.25)
            except queue.Empty:
                continue
            session, shortcut_id = signal.body[0], signal.body[1]
            if session == self._session and shortcut_id == SHORTCUT_ID:
                self._activated.emit()

    def _create_session(self, router: DBusRouter) -> str:
        token = f"infinitevl_{uuid.uuid4().hex}"
        call = (SHORTCUTS, "CreateSession", "a{sv}", ())
        options = {"session_handle_token": ("s", token)}
        results = portal_request(router, call, options, ANSWER_TIMEOUT, self._stop)
        return str(results["session_handle"][1])

    def _bind(self, router: DBusRouter, session: str, combo: KeyCombo) -> str:
        shortcut = {
            "description": ("s", "Read a screen region (InfiniteVL)"),
            "preferred_trigger": ("s", combo.portal_trigger()),
        }
        call = (
            SHORTCUTS,
            "BindShortcuts",
            "oa(sa{sv})sa{sv}",
            (session, [(SHORTCUT_ID, shortcut)], ""),
        )
        results = portal_request(router, call, {}, ANSWER_TIMEOUT, self._stop)
        bound = dict(results.get("shortcuts", ("", []))[1])
        if SHORTCUT_ID not in bound:
            raise PortalError("the desktop did not bind the shortcut")
        return str(bound[SHORTCUT_ID].get("trigger_description", ("s", str(combo)))[1])
