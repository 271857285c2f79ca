"""App test fixtures: offscreen Qt, a private data dir per test, and the tiny real engine."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Callable, Iterator  # noqa: E402 (Qt platform must be set first)
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from app.chat.window import MainWindow  # noqa: E402
from app.main import build  # noqa: E402

EngineFactory = Callable[[str | None, str, str], Any]


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Any:
    """One loaded tiny Engine (tests/conftest.py's checkpoint) shared by the app tests."""
    from engine import Engine

    return Engine.load(tiny_checkpoint, device="cpu")


@pytest.fixture
def tiny_factory(tiny_engine: Any) -> EngineFactory:
    """An engine factory for ``build`` that hands out the shared tiny engine."""

    def load(path: str | None, device: str, quant: str = "none") -> Any:
        return tiny_engine

    return load


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def make_window(qtbot: Any, data_dir: Path) -> Iterator[Callable[..., MainWindow]]:
    """``make_window(factory)`` builds the app on ``data_dir``; windows are closed at the end."""
    windows: list[MainWindow] = []

    def make(factory: EngineFactory, *extra: str) -> MainWindow:
        window = build(["--data-dir", str(data_dir), *extra], factory)
        qtbot.addWidget(window)
        windows.append(window)
        # window shortcuts (Esc, Ctrl+R, ...) reach only the active window
        window.activateWindow()
        qtbot.waitUntil(window.isActiveWindow, timeout=5000)
        return window

    yield make
    for window in windows:
        window.close()
