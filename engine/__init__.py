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
        MAX_TEXT_CHARS,
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
    from engine.models import (
        DownloadError,
        DownloadProgress,
        LocalModel,
        delete_model,
        download_model,
        hub_cache_dir,
        list_models,
    )
    from engine.sampling import SamplingParams

_EXPORTS = {
    "MAX_TEXT_CHARS": "engine.engine",
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
    "DownloadError": "engine.models",
    "DownloadProgress": "engine.models",
    "LocalModel": "engine.models",
    "delete_model": "engine.models",
    "download_model": "engine.models",
    "hub_cache_dir": "engine.models",
    "list_models": "engine.models",
}

__all__ = [
    "CancelToken",
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "DownloadError",
    "DownloadProgress",
    "Engine",
    "EngineError",
    "GenerationStats",
    "InputError",
    "LocalModel",
    "MAX_TEXT_CHARS",
    "ModelConfig",
    "ModelInfo",
    "SamplingParams",
    "Session",
    "StateError",
    "TextDelta",
    "delete_model",
    "download_model",
    "hub_cache_dir",
    "list_models",
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
