"""One-shot background jobs that are not the model: decode a dropped image, search the history.

``run_in_background(fn, on_done, on_failed)`` runs ``fn()`` on Qt's thread pool and calls back
on the GUI thread. The engine never goes through here: it has its own thread (engine_client).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6 import QtCore

log = logging.getLogger(__name__)


class _Signals(QtCore.QObject):
    done = QtCore.Signal(object)
    failed = QtCore.Signal(str)


class _Job(QtCore.QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals) -> None:
        super().__init__()
        self._fn = fn
        self._signals = signals

    def run(self) -> None:
        try:
            result = self._fn()
        except Exception as exc:  # pool boundary: report, never lose it in the thread pool
            log.exception("background job %r failed", self._fn)
            self._signals.failed.emit(str(exc) or type(exc).__name__)
            return
        self._signals.done.emit(result)


class _Relay(QtCore.QObject):
    """Lives on the GUI thread, so the queued signals land there before calling back."""

    def __init__(
        self, on_done: Callable[[Any], None], on_failed: Callable[[str], None] | None
    ) -> None:
        super().__init__()
        self._on_done = on_done
        self._on_failed = on_failed
        self.signals = _Signals()
        self.signals.done.connect(self._on_job_done)
        self.signals.failed.connect(self._on_job_failed)

    @QtCore.Slot(object)
    def _on_job_done(self, result: object) -> None:
        _pending.discard(self)
        if _receiver_alive(self._on_done):
            self._on_done(result)

    @QtCore.Slot(str)
    def _on_job_failed(self, message: str) -> None:
        _pending.discard(self)
        if self._on_failed is not None and not _receiver_alive(self._on_failed):
            return
        if self._on_failed is None:
            log.error("background job failed: %s", message)
        else:
            self._on_failed(message)


_pending: set[_Relay] = set()


def _receiver_alive(callback: Callable[..., None]) -> bool:
    """False when ``callback`` is a method of a widget Qt has deleted (its window closed)."""
    receiver = getattr(callback, "__self__", None)
    if isinstance(receiver, QtCore.QObject) and not shiboken6.isValid(receiver):
        log.debug("background job finished after %r was deleted: result dropped", receiver)
        return False
    return True


def run_in_background(
    fn: Callable[[], Any],
    on_done: Callable[[Any], None],
    on_failed: Callable[[str], None] | None = None,
) -> None:
    """Run ``fn()`` off the GUI thread; ``on_done(result)`` or ``on_failed(message)`` on it.

    Call from the GUI thread.
    """
    relay = _Relay(on_done, on_failed)
    _pending.add(relay)
    QtCore.QThreadPool.globalInstance().start(_Job(fn, relay.signals))
