"""The real app, driven like a user until it is killed: ``python -m tests.faults.app_driver``.

Builds the window exactly as ``infinitevl app`` does (app.main.build with the real engine
factory, history store and panes), then keeps it busy: it types a message into the composer and
presses Send, and when the reply (and its state save) is done it opens a document in the reader
pane and presses "Read into memory", and so on. It prints one line per step on stdout, flushed,
for the killer in tests/faults/test_kill9_app.py:

  ready <how the conversation opened>   the model is loaded
  reply <n>                             a message was sent; the reply streams, then its state saves
  replied                               the reply and its state are stored
  document <n>                          a document read started (pages fed, then the state saved)
  read                                  the read and its state are stored
  failed <message>                      a reply or read failed (the parent fails the trial)

Args (argv): data directory, checkpoint directory, folder of page images, seed.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(argv: list[str]) -> int:
    import torch
    from PySide6 import QtCore, QtWidgets

    from app.engine_client import load_engine
    from app.main import build
    from app.reader.pane import ReaderPane

    torch.set_num_threads(1)
    data_dir, checkpoint, pages_dir, seed = argv[0], argv[1], Path(argv[2]), int(argv[3])
    pages = sorted(pages_dir.glob("*.png"))
    rng = random.Random(seed)
    window = build(["--data-dir", data_dir, "--model", checkpoint, "--device", "cpu"], load_engine)
    reader = window.findChild(ReaderPane)
    assert reader is not None, "the reader pane is not installed"
    steps = iter(range(10**6))

    def say(line: str) -> None:
        print(line, flush=True)

    def next_step() -> None:
        n = next(steps)
        if n % 2 == 0:
            words = " ".join(rng.choice(("screen", "page", "text", "table")) for _ in range(40))
            say(f"reply {n}")
            window.composer.set_text(f"step {seed}.{n}: {words}")
            window.composer.send_button.click()
        else:
            say(f"document {n}")
            reader.open_paths(pages[: rng.randint(1, len(pages))])  # "Read" once rendered

    def on_rendered(_count: int) -> None:
        reader.read_button.click()

    def on_loaded(_info: object) -> None:
        conversation = window.current_conversation_id
        window.store.set_options(conversation, "", {"max_new_tokens": rng.randint(100, 300)})
        QtCore.QTimer.singleShot(200, opened)

    def opened() -> None:
        status = window.controller.session_status
        say(f"ready {status.how if status is not None else 'new'}")
        next_step()

    reader.pages_rendered.connect(on_rendered)
    window.engine_client.model_loaded.connect(on_loaded)
    window.engine_client.model_load_failed.connect(lambda m: say(f"failed load: {m}"))
    window.controller.reply_finished.connect(lambda _id, _r: (say("replied"), next_step()))
    window.engine_client.generation_failed.connect(lambda _id, m: say(f"failed reply: {m}"))
    window.engine_client.job_finished.connect(lambda _id, _r: (say("read"), next_step()))
    window.engine_client.job_failed.connect(lambda _id, m: say(f"failed read: {m}"))
    app = QtWidgets.QApplication.instance()
    assert app is not None
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
