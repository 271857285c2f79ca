"""A private D-Bus bus and a fake xdg-desktop-portal (GlobalShortcuts, Screenshot) for tests."""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from jeepney import (
    DBusAddress,
    HeaderFields,
    MessageType,
    message_bus,
    new_method_return,
    new_signal,
)
from jeepney.io.blocking import open_dbus_connection

from app.capture.handlers.portal import SHORTCUTS
from app.capture.portal_request import PORTAL_BUS, PORTAL_PATH, REQUEST


@contextmanager
def private_bus_address() -> Iterator[str]:
    """The address of a fresh, private D-Bus session bus; skips where dbus-daemon is missing."""
    exe = shutil.which("dbus-daemon")
    if exe is None:
        pytest.skip("dbus-daemon is not installed")
    proc = subprocess.Popen(
        [exe, "--session", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    address = proc.stdout.readline().decode().strip()
    yield address
    proc.terminate()
    proc.wait(5)


class FakePortal:
    """xdg-desktop-portal's GlobalShortcuts and Screenshot as a desktop answers them."""

    def __init__(self, address: str, accept: bool = True) -> None:
        self.accept = accept
        self.bound: list[list] = []
        self.closed: list[str] = []
        self.session = ""
        self.screenshot_uri = ""  # what Screenshot answers
        self._commands: queue.Queue = queue.Queue()
        self._conn = open_dbus_connection(address)
        self._conn.send_and_get_reply(message_bus.RequestName(PORTAL_BUS))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def activate(self, shortcut_id: str, session: str | None = None) -> None:
        self._commands.put((shortcut_id, session or self.session))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            while not self._commands.empty():
                shortcut_id, session = self._commands.get()
                emitter = DBusAddress(PORTAL_PATH, interface=SHORTCUTS)
                body = (session, shortcut_id, 0, {})
                self._conn.send(new_signal(emitter, "Activated", "osta{sv}", body))
            try:
                msg = self._conn.receive(timeout=0.05)
            except TimeoutError:
                continue
            if msg.header.message_type == MessageType.method_call:
                fields = msg.header.fields
                self._answer(msg, fields[HeaderFields.member], fields[HeaderFields.sender])

    def _answer(self, msg, member: str, sender: str) -> None:  # noqa: ANN001
        who = sender.lstrip(":").replace(".", "_")
        if member == "Get":
            self._conn.send(new_method_return(msg, "v", (("u", 1),)))
            return
        if member == "Close":
            self.closed.append(msg.header.fields[HeaderFields.path])
            self._conn.send(new_method_return(msg))
            return
        options = msg.body[-1]
        request = f"/org/freedesktop/portal/desktop/request/{who}/{options['handle_token'][1]}"
        self._conn.send(new_method_return(msg, "o", (request,)))
        if member == "Screenshot":
            code, results = (0, {"uri": ("s", self.screenshot_uri)}) if self.accept else (1, {})
        elif member == "CreateSession":
            token = options["session_handle_token"][1]
            self.session = f"/org/freedesktop/portal/desktop/session/{who}/{token}"
            code, results = 0, {"session_handle": ("s", self.session)}
        else:
            shortcuts = msg.body[1]
            self.bound.append(shortcuts)
            granted = [(sid, {"trigger_description": ("s", "Ctrl+Alt+O")}) for sid, _ in shortcuts]
            code = 0 if self.accept else 1
            results = {"shortcuts": ("a(sa{sv})", granted if self.accept else [])}
        answer = new_signal(
            DBusAddress(request, interface=REQUEST), "Response", "ua{sv}", (code, results)
        )
        self._conn.send(answer)
