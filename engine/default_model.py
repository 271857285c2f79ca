"""Where the embedded default model lives: ``resources/default-model/`` beside the packages.

The training pipeline (issue #5) writes it there; until it does, the engine says so plainly and
never substitutes random weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "default-model"
# the files that make a directory a usable checkpoint (weights: single file or shard index)
_REQUIRED = ("config.json", "tokenizer.json")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def no_default_model_message() -> str:
    """What to tell a user who asked for the embedded model where there is none."""
    return (
        f"no embedded default model: {DEFAULT_MODEL_DIR} holds no checkpoint yet. Point the "
        "command at a checkpoint directory instead, e.g. a download of hustvl/InfiniteVL from "
        "the Hugging Face hub: infinitevl generate --model /path/to/InfiniteVL 'your question'"
    )


def find_default_model(directory: Path | None = None) -> Path | None:
    """The embedded default checkpoint directory, or None when it is absent or incomplete.

    Args:
        directory: where to look; None is ``DEFAULT_MODEL_DIR`` (read at call time).
    """
    directory = DEFAULT_MODEL_DIR if directory is None else directory
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
