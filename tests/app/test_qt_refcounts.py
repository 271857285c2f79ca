"""The Qt binding keeps Python's reference counts: a call of a Qt method that returns nothing
must not take a reference from None (PySide6 6.12 under Python 3.11 does, and the app then
aborts with "none_dealloc" after a few thousand calls: pyproject.toml keeps it out there)."""

from __future__ import annotations

import os
import subprocess
import sys

# in a child process: a binding with the bug aborts the interpreter it runs in
PROBE = """
import sys
from PySide6 import QtWidgets
app = QtWidgets.QApplication([])
button, label = QtWidgets.QPushButton("x"), QtWidgets.QLabel("x")
before = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
for i in range(20_000):
    button.setVisible(i % 2 == 0)
    button.setEnabled(True)
    label.setText("y")
after = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
print(*(b - a for a, b in zip(before, after)))
"""


def test_void_qt_calls_keep_none_and_bools_alive() -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    run = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # 60,000 calls: a binding that drops a reference each call loses thousands
    assert all(abs(int(d)) < 100 for d in run.stdout.split()), run.stdout
