"""InfiniteVL engine: config, model, state, checkpoints, processor and sessions. Never imports Qt.

The public API the app and scripts use is exported here. Names load on first use (PEP 562), so
``import engine.config`` stays light and a missing optional part fails only where it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import ModelConfig
    from engine.engine import (
        CancelToken,
        Engine,
        GenerationStats,
        ModelInfo,
        Session,
        TextDelta,
    )
    from engine.errors import (
        Cancelled,
        CheckpointError,
        ConfigError,
        EngineError,
        InputError,
        StateError,
    )
    from engine.sampling import SamplingParams

_EXPORTS = {
    "CancelToken": "engine.engine",
    "Engine": "engine.engine",
    "GenerationStats": "engine.engine",
    "ModelInfo": "engine.engine",
    "Session": "engine.engine",
    "TextDelta": "engine.engine",
    "SamplingParams": "engine.sampling",
    "ModelConfig": "engine.config",
    "EngineError": "engine.errors",
    "ConfigError": "engine.errors",
    "CheckpointError": "engine.errors",
    "StateError": "engine.errors",
    "InputError": "engine.errors",
    "Cancelled": "engine.errors",
}

__all__ = [
    "CancelToken",
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "Engine",
    "EngineError",
    "GenerationStats",
    "InputError",
    "ModelConfig",
    "ModelInfo",
    "SamplingParams",
    "Session",
    "StateError",
    "TextDelta",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
