"""Helpers shared by the tests of every part: tiny checkpoints in the published format."""

from engine.testing.tiny_checkpoint import (
    write_tiny_checkpoint,
    write_tiny_preprocessor_config,
    write_tiny_tokenizer,
)

__all__ = ["write_tiny_checkpoint", "write_tiny_preprocessor_config", "write_tiny_tokenizer"]
