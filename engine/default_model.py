"""Where the embedded default model lives.

In a checkout (and an editable install, and the PyInstaller bundle) it is
``resources/default-model/`` beside the packages; a wheel installs the same files as data under
``<prefix>/share/infinitevl-desktop/default-model`` (``[tool.setuptools.data-files]``), where
``<prefix>`` is the environment's data folder (a virtual environment, or ``~/.local`` for a
``--user`` install). The training pipeline (issue #5) writes it. Where it is absent (a wheel
built without it, a deleted folder), the engine says so plainly and never substitutes random
weights.
"""

from __future__ import annotations

import logging
import os
import site
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "default-model"
INSTALLED_SUBDIR = Path("share") / "infinitevl-desktop" / "default-model"
# the files that make a directory a usable checkpoint (weights: single file or shard index)
_REQUIRED = ("config.json", "tokenizer.json")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def installed_dirs() -> list[Path]:
    """Where a wheel puts the model: this environment's data folder, then the user's."""
    prefixes = [Path(sysconfig.get_path("data"))]
    if site.ENABLE_USER_SITE:
        prefixes.append(Path(sysconfig.get_path("data", f"{os.name}_user")))
    return list(dict.fromkeys(p / INSTALLED_SUBDIR for p in prefixes))


def candidate_dirs() -> list[Path]:
    """Every place looked at, in order (``DEFAULT_MODEL_DIR`` read at call time)."""
    return list(dict.fromkeys([DEFAULT_MODEL_DIR, *installed_dirs()]))


def no_default_model_message() -> str:
    """What to tell a user who asked for the embedded model where there is none."""
    return (
        f"no embedded default model: {DEFAULT_MODEL_DIR} holds no complete checkpoint. Point the "
        "command at a checkpoint directory instead, e.g. a download of hustvl/InfiniteVL from "
        "the Hugging Face hub: infinitevl generate --model /path/to/InfiniteVL 'your question'"
    )


def find_default_model(directory: Path | None = None) -> Path | None:
    """The embedded default checkpoint directory, or None when it is absent or incomplete.

    Args:
        directory: where to look; None looks through ``candidate_dirs()`` and takes the first
            complete checkpoint.
    """
    if directory is None:
        candidates = candidate_dirs()
        for candidate in candidates:
            if candidate.is_dir():
                return find_default_model(candidate)
        log.info("no embedded default model in %s", [str(d) for d in candidates])
        return None
    if not directory.is_dir():
        log.info("no embedded default model at %s", directory)
        return None
    missing = [name for name in _REQUIRED if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in _WEIGHTS):
        missing.append(" or ".join(_WEIGHTS))
    if missing:
        log.warning("embedded default model at %s is incomplete: missing %s", directory, missing)
        return None
    return directory
