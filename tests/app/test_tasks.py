"""Background jobs whose widget is gone by the time they finish."""

import threading
from typing import Any

from PySide6 import QtWidgets

from app.tasks import run_in_background


class _Label(QtWidgets.QLabel):
    def show_result(self, text: str) -> None:
        self.setText(text)


def test_run_in_background_drops_the_result_of_a_deleted_widget(qtbot: Any) -> None:
    # GIVEN a job whose callback belongs to a widget, and a second job to observe completion
    release = threading.Event()
    label, witness = _Label(), _Label()
    qtbot.addWidget(witness)
    run_in_background(lambda: release.wait(5) and "late", label.show_result)
    # WHEN the widget is deleted (its window closed) before the job finishes
    label.deleteLater()
    qtbot.waitUntil(lambda: not _alive(label), timeout=5000)
    release.set()
    run_in_background(lambda: "done", witness.show_result)
    # THEN the late result is dropped without an exception in the event loop
    qtbot.waitUntil(lambda: witness.text() == "done", timeout=5000)


def _alive(widget: QtWidgets.QWidget) -> bool:
    import shiboken6

    return shiboken6.isValid(widget)


def test_run_in_background_delivers_every_result_once_on_the_gui_thread(qtbot: Any) -> None:
    # GIVEN many short jobs at once, some failing (as the history search and the image decoder
    # start several while the window opens)
    from PySide6 import QtCore

    gui = QtCore.QThread.currentThread()
    done: list[int] = []
    failed: list[str] = []
    threads: set[bool] = set()

    def job(i: int) -> int:
        if i % 7 == 0:
            raise ValueError(f"job {i} failed")
        return i

    def on_done(i: int) -> None:
        threads.add(QtCore.QThread.currentThread() is gui)
        done.append(i)

    def on_failed(message: str) -> None:
        threads.add(QtCore.QThread.currentThread() is gui)
        failed.append(message)

    # WHEN they all finish
    for i in range(300):
        run_in_background(lambda i=i: job(i), on_done, on_failed)
    qtbot.waitUntil(lambda: len(done) + len(failed) == 300, timeout=20000)
    qtbot.wait(50)
    # THEN each result came exactly once, on the GUI thread, and each failure says what failed
    assert sorted(done) == [i for i in range(300) if i % 7]
    assert sorted(failed) == sorted(f"job {i} failed" for i in range(0, 300, 7))
    assert threads == {True}
