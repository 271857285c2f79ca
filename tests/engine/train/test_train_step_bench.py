"""benchmarks/train_step.py: the step-time table of a stage, on a tiny checkpoint on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import train_step
from engine.train.pipeline import CONFIGS


def test_prints_a_row_per_batch_size(teacher_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(CONFIGS / "reading.toml"), "--init", str(teacher_dir), "--batch", "2,4",
            "--steps", "1", "--device", "cpu"]  # fmt: skip
    assert train_step.main(argv) == 0
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| (\d+) \|", capsys.readouterr().out, re.M)
    assert [r[0] for r in rows] == ["2", "4"]
    assert all(float(r[1]) > 0 for r in rows)
