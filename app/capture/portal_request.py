"""Calls to xdg-desktop-portal methods that answer later, through a Request object's Response
signal (GlobalShortcuts, Screenshot). jeepney, not QtDBus: see docs/adr/002-global-hotkey.md.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, message_bus, new_method_call
from jeepney.io.threading import DBusRouter

PORTAL_BUS = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
REQUEST = "org.freedesktop.portal.Request"
CALL_TIMEOUT = 10.0  # seconds for the portal to answer a call

Results = dict[str, tuple[str, Any]]  # a{sv}: name -> (signature, value)


class PortalError(RuntimeError):
    """The portal refused a request, did not answer, or the user declined."""


def portal_address(interface: str) -> DBusAddress:
    return DBusAddress(PORTAL_PATH, bus_name=PORTAL_BUS, interface=interface)


def portal_request(
    router: DBusRouter,
    call: tuple[str, str, str, tuple[Any, ...]],
    options: Results,
    answer_timeout: float,
    stop: threading.Event | None = None,
) -> Results:
    """Call a portal method and wait for its Response.

    Args:
        call: (interface, method, signature, arguments before the trailing options a{sv}).
        options: the options a{sv}; a fresh handle_token is added.
        answer_timeout: seconds to wait for the Response (the user may be answering a dialog).
        stop: set from another thread to give up waiting.
    Returns:
        the Response's results.
    Raises:
        PortalError: an error reply, a non-zero response (1: the user declined), no answer in
            time, or `stop` set.
    """
    interface, method, signature, args = call
    responses = MatchRule(type="signal", interface=REQUEST, member="Response")
    router.send_and_get_reply(message_bus.AddMatch(responses), timeout=CALL_TIMEOUT)
    with router.filter(responses, bufsize=16) as answers:
        body = (*args, {**options, "handle_token": ("s", f"infinitevl_{uuid.uuid4().hex}")})
        message = new_method_call(portal_address(interface), method, signature, body)
        reply = router.send_and_get_reply(message, timeout=CALL_TIMEOUT)
        if reply.header.message_type == MessageType.error:
            raise PortalError(f"{method} failed: {reply.body[0] if reply.body else reply}")
        request_path = reply.body[0]
        deadline = time.monotonic() + answer_timeout
        while True:
            signal = next_signal(answers, deadline, method, stop)
            if signal.header.fields.get(HeaderFields.path) == request_path:
                break
    code, results = signal.body
    if code != 0:
        reason = "the user declined" if code == 1 else f"the portal answered {code}"
        raise PortalError(f"{method}: {reason}")
    return results


def next_signal(
    signals: queue.Queue, deadline: float, waiting_for: str, stop: threading.Event | None
) -> Any:  # noqa: ANN401 (a jeepney Message)
    """The next message from a router filter queue, giving up at `deadline` or on `stop`."""
    while stop is None or not stop.is_set():
        try:
            return signals.get(timeout=0.25)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise PortalError(f"no answer to {waiting_for} from the desktop") from None
    raise PortalError(f"stopped while waiting for {waiting_for}")
