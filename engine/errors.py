"""Errors the engine raises at its public boundaries; each message names the offending values."""


class EngineError(Exception):
    """Base class of every error the engine reports to its callers (CLI, app)."""


class ConfigError(EngineError, ValueError):
    """A config.json or preprocessor_config.json that cannot describe a model."""


class CheckpointError(EngineError):
    """A checkpoint directory that cannot be loaded: missing, corrupt or mis-shaped tensors."""


class StateError(EngineError):
    """A saved session state that belongs to another model, or is damaged."""


class InputError(EngineError, ValueError):
    """Bad user input: an unreadable image, an empty prompt, a region of zero area."""


class Cancelled(EngineError):
    """A request stopped through its CancelToken."""
