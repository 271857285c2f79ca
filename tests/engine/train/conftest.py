"""Tiny teacher checkpoints and stage configs for the training tests (CPU, seconds each)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import ModelConfig, tiny_config
from engine.testing.tiny_checkpoint import write_tiny_checkpoint
from engine.train.config import STAGE1_TRAINABLE, DataConfig, TrainConfig

FULL = ("full_attention",) * 4
HYBRID = ("sliding_attention", "linear_attention", "linear_attention", "linear_attention")
# small renders: 56-112 px screens, 84 px pages -> at most a few dozen image tokens
TINY_DATA = DataConfig(
    weights={"ocr_screen": 1.0, "qa": 0.5},
    seed=11,
    max_tokens=192,
    max_pixels=112 * 112,
    page_size=84,
    num_pages=(2, 2),
    screen_width=(56, 112),
    screen_height=(28, 56),
)
# the same global batch every step: a few steps must lower the loss
REPEATED_DATA = replace(TINY_DATA, repeat=4)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny full-attention checkpoint (random weights) with tokenizer and preprocessor."""
    # as many Gated DeltaNet heads as attention heads, so the student starts from q/k/v/o
    raw = {**tiny_config(FULL).to_hf(), "num_linear_heads": 4, "num_linear_key_value_heads": 4}
    config = ModelConfig.from_hf(raw)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("teacher"), config, seed=3)


def stage_config(stage: str, init: Path, out_dir: Path, **changes: object) -> TrainConfig:
    """A few-step CPU run of `stage`."""
    base = TrainConfig(
        stage=stage,
        init=str(init),
        out_dir=str(out_dir),
        data=REPEATED_DATA,
        steps=6,
        batch_size=4,
        micro_batch=2,
        lr=3e-3,
        warmup=1,
        save_every=1000,
        log_every=1000,
        device="cpu",
    )
    if stage.startswith("distill"):
        changes = {"trainable": STAGE1_TRAINABLE, "layer_types": HYBRID, **changes}
    return base.with_(**changes)
