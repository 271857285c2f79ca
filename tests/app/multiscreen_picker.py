"""Run by tests/app/test_capture.py in its own process, because the Qt platform is fixed per
process: the region picker on two screens of Qt's offscreen platform, a 2x one and a 1x one,
driven with QTest. Prints, per screen, whether the crop equals the expected physical pixels.
"""

from __future__ import annotations

import json

import numpy as np
from PySide6 import QtCore, QtWidgets
from PySide6.QtTest import QTest

from app.capture.geometry import Rect
from app.capture.region_picker import RegionPicker
from app.capture.screenshot import MonitorShot

# the offscreen config the test writes: left 640x400 points at 2x, right 800x600 at 1x, whose
# origin is in native pixels (1280) as Qt 6 keeps it on X11
SCREENS = {
    "screens": [
        {"name": "left", "x": 0, "y": 0, "width": 640, "height": 400, "dpr": 2},
        {"name": "right", "x": 1280, "y": 0, "width": 800, "height": 600, "dpr": 1},
    ]
}


def main() -> None:
    app = QtWidgets.QApplication([])
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, size=(800, 1280, 3), dtype=np.uint8)
    right = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
    # mss lists monitors in its own order, in physical pixels
    shots = [MonitorShot(Rect(1280, 0, 800, 600), right), MonitorShot(Rect(0, 0, 1280, 800), left)]
    cases = {
        "left": (0, (100, 50), (300, 120), left[100:240, 200:600]),
        "right": (1, (10, 20), (110, 70), right[20:70, 10:110]),
    }
    results = {}
    for name, (index, start, end, expected) in cases.items():
        picker = RegionPicker(shots)
        picker.start()
        overlay = picker.overlays[index]
        QTest.qWaitForWindowExposed(overlay)
        crops: list[np.ndarray] = []
        picker.region_selected.connect(crops.append)
        button = QtCore.Qt.MouseButton.LeftButton
        QTest.mousePress(overlay, button, pos=QtCore.QPoint(*start))
        QTest.mouseRelease(overlay, button, pos=QtCore.QPoint(*end))
        results[name] = {
            "screen": overlay.screen().name(),
            "overlay_size": [overlay.width(), overlay.height()],
            "crop_shape": list(crops[0].shape) if crops else None,
            "equal": bool(crops) and bool(np.array_equal(crops[0], expected)),
        }
    print(json.dumps(results))
    app.quit()


if __name__ == "__main__":
    main()
