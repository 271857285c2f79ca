"""benchmarks/train_step.py: the step-time table of a stage, on a tiny checkpoint on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import train_step
from engine.train.pipeline import CONFIGS


def _rows(out: str) -> list[list[str]]:
    """The table's data rows, as lists of cells."""
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if re.match(r"^\| \d+ \|", line)
    ]


def test_prints_a_row_per_batch_size(teacher_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(CONFIGS / "reading.toml"), "--init", str(teacher_dir), "--batch", "2,4",
            "--steps", "1", "--device", "cpu"]  # fmt: skip
    assert train_step.main(argv) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["2", "4"]
    assert all(float(r[1]) > 0 for r in rows)
    assert all(float(r[2]) == 0 for r in rows)  # pre-encoded batches: no waiting for data


def test_distinct_batches_and_the_loaders_batches(
    teacher_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [str(CONFIGS / "reading.toml"), "--init", str(teacher_dir), "--batch", "2",
            "--steps", "2", "--device", "cpu"]  # fmt: skip
    assert train_step.main([*base, "--distinct", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 distinct" in out
    assert len(_rows(out)) == 1
    assert train_step.main([*base, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "loader, 1 workers" in out
    (row,) = _rows(out)
    assert float(row[1]) >= float(row[2]) >= 0  # the wait is part of the step


def test_profile_counts_the_operators_of_a_step(
    teacher_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(CONFIGS / "reading.toml"), "--init", str(teacher_dir), "--batch", "2",
            "--steps", "1", "--device", "cpu", "--profile"]  # fmt: skip
    assert train_step.main(argv) == 0
    found = re.search(r"aten operators dispatched: (\d+)", capsys.readouterr().out)
    assert found and int(found.group(1)) > 100  # forward, backward and AdamW of a whole model
