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
