"""Fixtures every test may use: tiny checkpoints in the published format, built once per session."""

import os
from pathlib import Path

import pytest
import torch

from engine.config import tiny_config
from engine.testing import write_tiny_checkpoint, write_tiny_tokenizer

# the test machines share few cores between many processes
torch.set_num_threads(min(2, torch.get_num_threads()))
# small checkpoints compute in float32 on the CPU, as the references they are compared with, not in
# whichever dtype this CPU timed faster (engine/cpu_dtype.py; tests/engine/test_cpu_dtype.py
# times both); subprocesses (the CLI's tests) inherit it
os.environ["INFINITEVL_CPU_DTYPE"] = "float32"

TEACHER_LAYER_TYPES = ("full_attention",) * 4


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny hybrid checkpoint (SWA, GDN, SWA, GDN; vocab 256), float32, seed 0. Do not modify."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))


@pytest.fixture(scope="session")
def tiny_teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny full-attention checkpoint (the Transformer teacher's shape), seed 0. Do not modify."""
    config = tiny_config(TEACHER_LAYER_TYPES)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_teacher_checkpoint"), config)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer.json + tokenizer_config.json of the tiny checkpoints, without weights."""
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))
