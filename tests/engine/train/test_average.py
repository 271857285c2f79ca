"""Averaging checkpoints: every weight is the mean, stored as the first checkpoint is, and what
cannot be averaged is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError
from engine.loader import load_model
from engine.testing.tiny_checkpoint import tiny_config, write_tiny_checkpoint
from engine.train.average import average_checkpoints, main, stored_dtype


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path, dtype=torch.float32)
    return model.state_dict()


def test_the_mean_of_two_runs_is_written_as_they_are_stored(tmp_path: Path) -> None:
    a = write_tiny_checkpoint(tmp_path / "a", seed=0, dtype=torch.bfloat16)
    b = write_tiny_checkpoint(tmp_path / "b", seed=1, dtype=torch.bfloat16)
    assert main([str(a), str(b), "--out", str(tmp_path / "soup")]) == 0
    assert stored_dtype(tmp_path / "soup") == torch.bfloat16
    wa, wb, mean = _weights(a), _weights(b), _weights(tmp_path / "soup")
    assert mean.keys() == wa.keys()
    moved = 0
    for name, t in mean.items():
        want = ((wa[name] + wb[name]) / 2).to(torch.bfloat16).float()
        if "A_log" in name:  # kept in float32
            want = (wa[name] + wb[name]) / 2
        torch.testing.assert_close(t, want, rtol=0, atol=0, msg=name)
        moved += int(not torch.equal(t, wa[name]))
    assert moved > len(mean) // 2  # the seeds' weights differ: the mean is neither of them
    assert (tmp_path / "soup" / "tokenizer.json").is_file()


def test_weights_tilt_the_mean(tmp_path: Path) -> None:
    a = write_tiny_checkpoint(tmp_path / "a", seed=0)
    b = write_tiny_checkpoint(tmp_path / "b", seed=1)
    only_b = average_checkpoints([a, b], [0.0, 1.0]).state_dict()
    for name, t in _weights(b).items():
        torch.testing.assert_close(only_b[name], t, msg=name)


def test_what_cannot_be_averaged_is_refused(tmp_path: Path) -> None:
    a = write_tiny_checkpoint(tmp_path / "a", seed=0)
    teacher = write_tiny_checkpoint(tmp_path / "t", tiny_config(("full_attention",) * 4), seed=1)
    with pytest.raises(ConfigError, match="another architecture"):
        average_checkpoints([a, teacher])
    with pytest.raises(ConfigError, match="two checkpoints"):
        average_checkpoints([a])
    with pytest.raises(ConfigError, match="do not fit"):
        average_checkpoints([a, a], [1.0])
    with pytest.raises(SystemExit):  # the command says so and writes nothing
        main([str(a), str(teacher), "--out", str(tmp_path / "soup")])
    assert not (tmp_path / "soup").exists()
