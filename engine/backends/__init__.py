"""Other backends behind the session API of ``engine.engine``: GGUF models through llama.cpp.

``load_engine(path)`` picks the backend from what ``path`` holds: a ``.gguf`` file (or a
directory of them without config.json) opens :class:`engine.backends.gguf.GGUFEngine`, anything
else the torch :class:`engine.engine.Engine`. Backends import their libraries on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.backends.gguf import GGUFEngine
    from engine.engine import Engine


def is_gguf(path: str | Path) -> bool:
    """True for a .gguf file, or a directory holding .gguf files and no config.json."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".gguf"
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf"))


def load_engine(
    path: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str | None = None,
    quant: str | None = None,
) -> Engine | GGUFEngine:
    """Open ``path`` with the backend that reads it (None: the embedded default model).

    Raises:
        EngineError: as ``Engine.load`` / ``GGUFEngine.load``; ``dtype``/``quant`` given for a
            GGUF file (its tensors are stored quantized as they are).
    """
    if path is not None and is_gguf(path):
        from engine.backends.gguf import GGUFEngine
        from engine.errors import InputError

        if dtype is not None or quant not in (None, "none"):
            raise InputError(
                f"{path} is a GGUF model: it runs as its file stores it (no --dtype/--quant)"
            )
        return GGUFEngine.load(path, device=device)
    from engine.engine import Engine

    return Engine.load(path, device=device, dtype=dtype, quant=quant)
