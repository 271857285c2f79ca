"""Take screenshots of the app's main views into docs/screenshots/*.png.

Runs offscreen (or under Xvfb: ``xvfb-run .venv/bin/python docs/screenshots.py``) on a fresh
temporary data directory with the tiny test checkpoint loaded, so the status bar shows a real
engine. The conversations shown are samples this script writes into the history (the tiny
model's own replies are noise); opening one makes the tiny engine read it, as the app does.

    .venv/bin/python docs/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from PySide6 import QtCore, QtWidgets  # noqa: E402

from app.chat.images import to_png  # noqa: E402
from app.chat.settings_dialog import SettingsDialog  # noqa: E402
from app.chat.window import MainWindow  # noqa: E402
from app.main import build  # noqa: E402
from app.reader.pane import ReaderPane  # noqa: E402
from engine import default_model  # noqa: E402
from engine.errors import EngineError  # noqa: E402
from engine.testing import write_tiny_checkpoint  # noqa: E402

log = logging.getLogger("screenshots")

SAMPLE_QUESTION = "What does this screenshot say? Give me the table as CSV."
SAMPLE_REPLY = """It is a **quarterly report** window with notes and a table:

- Sales grew 12% in the third quarter.
- The new office in Lyon opens on 3 March 2025.
- Meeting with the design team: Tuesday, 10:30.

```csv
region,q2,q3
North,1240,1395
South,980,1102
Total,2220,2497
```

The *Send report* button is at the bottom right."""


def _pump(seconds: float) -> None:
    app = QtWidgets.QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def _wait(condition: object, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:  # type: ignore[operator]
        _pump(0.05)


def _sample_conversation(window: MainWindow) -> None:
    store = window.store
    c = store.create_conversation("Reading a quarterly report", system_prompt="Answer briefly.")
    image = np.asarray(Image.open(ROOT / "resources" / "sample.png").convert("RGB"))
    store.add_message(c.id, "user", SAMPLE_QUESTION, [(to_png(image), "image/png")])
    store.add_message(c.id, "assistant", SAMPLE_REPLY)
    other = store.create_conversation("Trip plans: Lisbon in May")
    store.add_message(other.id, "user", "Three things to see in Lisbon in May?")
    store.add_message(other.id, "assistant", "1. Belém\n2. Alfama\n3. LX Factory")
    window.controller.refresh_list()
    window.controller.open_conversation(c.id)


def _save(widget: QtWidgets.QWidget, path: Path) -> None:
    _pump(0.3)
    if not widget.grab().save(str(path)):
        raise OSError(f"could not write {path}")
    print(f"wrote {path}")


def take(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="infinitevl-shots-"))
    model = write_tiny_checkpoint(work / "tiny-model")

    def no_model(path: str | None, device: str, quant: str = "none") -> object:
        raise EngineError(default_model.no_default_model_message())

    empty = build(["--data-dir", str(work / "empty")], no_model)
    empty.resize(1100, 700)
    _wait(lambda: "No model" in empty.transcript.placeholder.text())
    _save(empty, out / "no-model.png")
    empty.close()

    window = build(["--data-dir", str(work / "data"), "--model", str(model), "--device", "cpu"])
    window.resize(1400, 800)
    _wait(lambda: window.engine_client.model_info is not None)
    _sample_conversation(window)
    _wait(lambda: window.controller.session_status is not None)
    docks = window.findChildren(QtWidgets.QDockWidget)
    for dock in docks:  # the chat alone first; each pane gets its own shot below
        dock.hide()
    _save(window, out / "chat.png")

    window.conversations.search_box.setText("lisbon")
    _wait(lambda: window.conversations.is_searching)
    _save(window, out / "search.png")
    window.conversations.search_box.clear()

    dialog = SettingsDialog(window.settings, window)
    dialog.show()
    _save(dialog, out / "settings.png")
    dialog.close()

    for dock in docks:
        if isinstance(dock.widget(), ReaderPane):
            dock.widget().open_paths([ROOT / "resources" / "sample.png"])
        for other in docks:
            other.setVisible(other is dock)
        dock.raise_()
        name = dock.windowTitle().lower().replace(" ", "-")
        _save(window, out / f"pane-{name}.png")
    window.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    QtCore.QLocale.setDefault(QtCore.QLocale(QtCore.QLocale.Language.English))
    take(args.out)


if __name__ == "__main__":
    main()
