"""One-shot background jobs that are not the model: decode a dropped image, search the history.

``run_in_background(fn, on_done, on_failed)`` runs ``fn()`` on Qt's thread pool and calls back
on the GUI thread. The engine never goes through here: it has its own thread (engine_client).

Results travel through one ``_Dispatcher`` that lives on the GUI thread for the whole process.
A relay object per job, released by its own slot, used to be destroyed inside that slot's call
(PySide then read the freed object: a segfault now and then at start-up, when the Models list
and the first search finish).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import shiboken6
from PySide6 import QtCore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Callbacks:
    on_done: Callable[[Any], None]
    on_failed: Callable[[str], None] | None


class _Dispatcher(QtCore.QObject):
    """Hands each finished job's outcome to its callbacks, on the thread this object lives on."""

    finished = QtCore.Signal(int, bool, object)  # job id, succeeded, result or error message

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: dict[int, _Callbacks] = {}
        self._ids = itertools.count()
        # emitted from pool threads; queued so the callbacks always run on the GUI thread
        self.finished.connect(self._deliver, QtCore.Qt.ConnectionType.QueuedConnection)

    def register(self, callbacks: _Callbacks) -> int:
        job_id = next(self._ids)
        self._callbacks[job_id] = callbacks
        return job_id

    @QtCore.Slot(int, bool, object)
    def _deliver(self, job_id: int, succeeded: bool, payload: object) -> None:
        callbacks = self._callbacks.pop(job_id)
        if succeeded:
            if _receiver_alive(callbacks.on_done):
                callbacks.on_done(payload)
        elif callbacks.on_failed is None:
            log.error("background job failed: %s", payload)
        elif _receiver_alive(callbacks.on_failed):
            callbacks.on_failed(str(payload))


class _Job(QtCore.QRunnable):
    def __init__(self, fn: Callable[[], Any], dispatcher: _Dispatcher, job_id: int) -> None:
        super().__init__()
        self._fn = fn
        self._dispatcher = dispatcher
        self._job_id = job_id

    def run(self) -> None:
        try:
            result = self._fn()
        except Exception as exc:  # pool boundary: report, never lose it in the thread pool
            log.exception("background job %r failed", self._fn)
            self._dispatcher.finished.emit(self._job_id, False, str(exc) or type(exc).__name__)
            return
        self._dispatcher.finished.emit(self._job_id, True, result)


_dispatcher: _Dispatcher | None = None


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
    global _dispatcher
    if _dispatcher is None or not shiboken6.isValid(_dispatcher):
        _dispatcher = _Dispatcher()
    job_id = _dispatcher.register(_Callbacks(on_done, on_failed))
    QtCore.QThreadPool.globalInstance().start(_Job(fn, _dispatcher, job_id))
