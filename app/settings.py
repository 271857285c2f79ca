"""The app's settings: one declarative ``SETTINGS`` table feeds QSettings and argparse.

Values live in ``<data dir>/settings.ini`` (so a data directory is self-contained and tests
never touch the user's configuration). Command-line flags override them for one run and are
not written back. The data directory itself comes from --data-dir, $INFINITEVL_DATA_DIR or
platformdirs, in that order.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from PySide6 import QtCore

log = logging.getLogger(__name__)

APP_NAME = "infinitevl-desktop"
DATA_DIR_ENV = "INFINITEVL_DATA_DIR"


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    type: type
    default: str | int | bool
    help: str
    flag: str | None = None  # command-line flag, None: settings dialog only
    choices: tuple[str, ...] = ()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model_dir",
        str,
        "",
        "checkpoint directory (config.json, *.safetensors, tokenizer.json) or a GGUF model "
        "(a .gguf file, or a directory of them with its mmproj); empty: the embedded default model",
        "--model",
    ),
    Setting("device", str, "auto", "where the model runs", "--device", ("auto", "cpu", "cuda")),
    Setting(
        "quant",
        str,
        "none",
        "weights: none (as stored), int8 or int4 (CPU and CUDA), nf4 (CUDA, bitsandbytes)",
        "--quant",
        ("none", "int8", "int4", "nf4"),
    ),
    Setting("hotkey", str, "Ctrl+Alt+O", "shortcut that reads a screen region (OCR)"),
    Setting("theme", str, "system", "colour scheme", "--theme", ("system", "light", "dark")),
)
_BY_KEY = {s.key: s for s in SETTINGS}


def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(platformdirs.user_data_dir(APP_NAME))


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infinitevl app", description="InfiniteVL Desktop")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"history, attachments and saved states (default: ${DATA_DIR_ENV} or "
        f"{platformdirs.user_data_dir(APP_NAME)})",
    )
    for s in SETTINGS:
        if s.flag is not None:
            parser.add_argument(
                s.flag,
                dest=s.key,
                type=s.type,
                choices=s.choices or None,
                default=None,
                help=f"{s.help} (saved setting by default)",
            )
    return parser


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    data_dir: Path
    overrides: dict[str, object]  # flags given on the command line, for this run only


def parse_args(argv: Sequence[str]) -> LaunchOptions:
    """Parse app flags; exits with argparse's message on bad input, as any CLI does."""
    ns = argument_parser().parse_args(list(argv))
    overrides = {s.key: getattr(ns, s.key) for s in SETTINGS if s.flag is not None}
    data_dir = ns.data_dir or default_data_dir()
    return LaunchOptions(data_dir, {k: v for k, v in overrides.items() if v is not None})


class AppSettings:
    """Typed access to the saved settings, with this run's command-line overrides on top."""

    def __init__(self, data_dir: Path, overrides: dict[str, object] | None = None) -> None:
        self.path = data_dir / "settings.ini"
        self._qsettings = QtCore.QSettings(str(self.path), QtCore.QSettings.Format.IniFormat)
        self._overrides = dict(overrides or {})

    def get(self, key: str) -> str | int | bool:
        spec = _BY_KEY[key]
        if key in self._overrides:
            return spec.type(self._overrides[key])
        raw = self._qsettings.value(key, spec.default)
        try:
            value = spec.type(raw)
        except (TypeError, ValueError):
            log.warning("setting %s=%r is not a %s; using %r", key, raw, spec.type, spec.default)
            return spec.default
        if spec.choices and value not in spec.choices:
            log.warning("setting %s=%r is not one of %s", key, value, spec.choices)
            return spec.default
        return value

    def set(self, key: str, value: str | int | bool) -> None:
        spec = _BY_KEY[key]
        if spec.choices and value not in spec.choices:
            raise ValueError(f"{key} must be one of {spec.choices}, got {value!r}")
        self._overrides.pop(key, None)  # a choice made in the dialog wins over the flag
        self._qsettings.setValue(key, spec.type(value))
        self._qsettings.sync()
        if self.path.exists():
            os.chmod(self.path, 0o600)
