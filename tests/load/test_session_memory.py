"""A long session keeps flat memory: RSS and state size from 10K to 100K tokens on the tiny model.

benchmarks/session_memory.py runs the same loop to one million tokens (README numbers).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_session_memory_flat_to_100k_tokens(tiny_checkpoint: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "session_memory", ROOT / "benchmarks" / "session_memory.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(
        tiny_checkpoint, total=100_000, turn_tokens=10_000, marks=[10_000, 30_000, 100_000]
    )
    (seen0, rss0, state0, _), *_, (seen1, rss1, state1, _) = rows
    assert seen1 >= 100_000 and state1 == state0
    # 10x the tokens: the process grows by less than 16 MiB (allocator noise, no per-token memory)
    assert rss1 - rss0 < 16 * 2**20, (rss0, rss1)
