"""Wires the app: settings, history store, engine thread and main window.

``build(argv)`` returns the shown-but-not-running ``MainWindow`` (tests drive it);
``run(argv)`` is ``build(argv)`` plus the Qt event loop. Flags: --model, --device, --theme,
--data-dir (see app/settings.py).

API for other panes (capture, reader, webcam), all on the GUI thread:
- ``window.add_side_pane(title, widget) -> QDockWidget``: dock a pane (tabbed with the others),
  with a toggle in the View menu.
- ``window.attach_image(image)``: put a uint8 [H, W, 3] array into the composer of the open
  conversation (e.g. "send this capture to the chat").
- ``window.current_conversation_id`` (int | None) and the ``window.conversation_changed(int)``
  signal.
- ``window.engine_client`` (EngineClient), the one way to the engine thread. Each call returns a
  request id at once; results arrive as the client's signals, emitted on the GUI thread:
  - ``read_document(conversation_id, pages, label)``: pages (uint8 arrays or PIL images) into
    the conversation's state; ``job_progress(id, done, total)``, ``job_finished(id, JobResult)``
    or ``job_failed(id, message)``. An event line is added to the transcript; the state is
    saved afterwards, also when cancelled (the pages read so far stay).
  - ``feed_frames(conversation_id, frames)``: camera frames into the state; ``job_finished``.
  - ``ask_forked(conversation_id, text, images=(), params=None)``: ask about a copy of the
    conversation's state (None: a fresh session, as for OCR); ``token_streamed(id, text)``,
    ``generation_finished(id, ChatResult)`` (``.text``, ``.stats``) or
    ``generation_failed(id, message)``.
  - ``cancel(id)`` stops any of them; ``model_info`` is None until a model is loaded;
    ``not_ready_reason(conversation_id)`` says why a request cannot start now (no conversation
    open, no model loaded), None when it can.
- ``window.settings.get("hotkey")`` and the ``window.settings_changed`` signal.
A pane module exposes ``install(window)`` and is listed in ``PANE_MODULES``; one that fails to
install is logged and reported in the status bar, and the chat still opens.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from app.chat.window import MainWindow
from app.engine_client import EngineClient, load_engine
from app.history.store import HistoryError, HistoryStore
from app.settings import AppSettings, parse_args

log = logging.getLogger(__name__)

PANE_MODULES = (
    "app.reader.controller",
    "app.webcam.controller",
    "app.capture.main",
    "app.models_dialog",
)

_SCHEMES = {
    "light": QtCore.Qt.ColorScheme.Light,
    "dark": QtCore.Qt.ColorScheme.Dark,
}
_system_palette: list[QtGui.QPalette] = []  # the platform's palette, kept at the first switch


def dark_palette() -> QtGui.QPalette:
    palette = QtGui.QPalette()
    role, color = QtGui.QPalette.ColorRole, QtGui.QColor
    for r, c in (
        (role.Window, "#2b2b2b"),
        (role.WindowText, "#e6e6e6"),
        (role.Base, "#1e1e1e"),
        (role.AlternateBase, "#353535"),
        (role.Text, "#e6e6e6"),
        (role.Button, "#353535"),
        (role.ButtonText, "#e6e6e6"),
        (role.Highlight, "#3d6fb4"),
        (role.HighlightedText, "#ffffff"),
        (role.ToolTipBase, "#353535"),
        (role.ToolTipText, "#e6e6e6"),
        (role.PlaceholderText, "#8c8c8c"),
        (role.Link, "#7fb2ff"),
    ):
        palette.setColor(r, color(c))
    return palette


def apply_theme(theme: str) -> None:
    """Follow the system's light/dark scheme, or force one (palette set on every platform)."""
    app = QtWidgets.QApplication.instance()
    assert isinstance(app, QtWidgets.QApplication)
    hints = QtGui.QGuiApplication.styleHints()
    if not _system_palette:
        _system_palette.append(app.palette())
    if theme not in _SCHEMES:
        hints.unsetColorScheme()
        app.setPalette(_system_palette[0])
        return
    # platforms that can also switch their native parts; the palette covers the others
    hints.setColorScheme(_SCHEMES[theme])
    app.setPalette(dark_palette() if theme == "dark" else app.style().standardPalette())


def has_display() -> bool:
    """Whether Qt can open a window here (an X or Wayland display, or a non-X11 platform)."""
    if os.environ.get("QT_QPA_PLATFORM") or sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def install_panes(window: MainWindow, modules: Sequence[str] = PANE_MODULES) -> list[str]:
    """Call each pane module's ``install(window)``; returns the modules that failed."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name).install(window)
        except Exception:  # plug-in boundary: a broken pane must not take the chat down
            log.exception("pane %s could not be installed", name)
            failed.append(name)
    if failed:
        window.status.notify(f"Some panes could not start: {', '.join(failed)} (see the log)")
    return failed


def build(
    argv: Sequence[str] = (),
    engine_factory: Callable[[str | None, str, str], Any] = load_engine,
) -> MainWindow:
    """Create (or reuse) the QApplication and the wired, shown main window; no event loop."""
    options = parse_args(argv)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["infinitevl"])
    app.setApplicationName("InfiniteVL Desktop")
    store = HistoryStore(options.data_dir)
    settings = AppSettings(store.data_dir, options.overrides)
    apply_theme(str(settings.get("theme")))
    client = EngineClient(store.snapshots_dir, engine_factory)
    window = MainWindow(store, client, settings)
    window.settings_changed.connect(window.controller.refresh_list)
    window.settings_changed.connect(lambda: apply_theme(str(settings.get("theme"))))
    install_panes(window)
    conversations = store.conversations()
    if conversations:
        window.controller.open_conversation(conversations[0].id)
    else:
        window.controller.new_conversation()
    window.show()
    # the first window shows at once; the model loads on the engine thread behind it
    QtCore.QTimer.singleShot(0, window.load_model)
    log.info("app built on %s", store.data_dir)
    return window


def report_unexpected_errors(window: MainWindow) -> None:
    """Make an exception escaping a Qt slot a logged status-bar message, never a crash."""

    def report(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.error("unexpected error", exc_info=(kind, exc, tb))
        window.status.notify(f"Something went wrong (details in the log): {exc}")

    sys.excepthook = report


def close_on_signals(window: MainWindow) -> QtCore.QTimer:
    """Ctrl+C or SIGTERM closes the window the normal way, so the state is saved."""

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: closing", signum)
        window.close()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Python runs signal handlers only between bytecodes: wake it up regularly
    timer = QtCore.QTimer(window, interval=250)
    timer.timeout.connect(lambda: None)
    timer.start()
    return timer


def run(argv: Sequence[str] = ()) -> int:
    """Start the app and run until its window closes; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parse_args(argv)  # --help and bad flags answer before anything needs a display
    if not has_display():
        sys.stderr.write(
            "infinitevl app: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set).\n"
            "Run it in a desktop session, or under a virtual screen: "
            "xvfb-run .venv/bin/infinitevl app\n"
        )
        return 2
    try:
        window = build(argv)
    except HistoryError as exc:
        sys.stderr.write(f"infinitevl app: {exc}\n")
        return 2
    report_unexpected_errors(window)
    close_on_signals(window)
    app = QtWidgets.QApplication.instance()
    assert app is not None
    return int(app.exec()) if window.isVisible() else 0
