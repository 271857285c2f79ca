"""A small checkpoint on the CPU computes in float32 or bfloat16, whichever this machine runs
faster: timed on its first load, remembered for the next, pinned by INFINITEVL_CPU_DTYPE."""

import json
from pathlib import Path

import pytest
import torch

from engine import cpu_dtype
from engine.engine import Engine
from engine.errors import InputError
from engine.testing import write_tiny_checkpoint


@pytest.fixture
def bf16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint stored in bfloat16, as the embedded model is."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("bf16"), dtype=torch.bfloat16)


@pytest.fixture
def unpinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No dtype pinned (conftest pins float32) and a cache of our own; returns the cache file."""
    monkeypatch.delenv(cpu_dtype.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return cpu_dtype.cache_file()


def clock(monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]) -> list[str]:
    """Replace the timing with `seconds` per dtype; returns the dtypes timed, in order."""
    timed: list[str] = []

    def fake(engine: Engine, picture: object) -> float:
        timed.append(engine.info.dtype)
        return seconds[engine.info.dtype]

    monkeypatch.setattr(cpu_dtype, "reply_seconds", fake)
    return timed


@pytest.mark.parametrize("faster", ["bfloat16", "float32"])
def test_first_load_times_both_and_keeps_the_faster(
    bf16_checkpoint: Path, unpinned: Path, monkeypatch: pytest.MonkeyPatch, faster: str
) -> None:
    # GIVEN a CPU on which `faster` answers in half the time of the other dtype
    slower = "float32" if faster == "bfloat16" else "bfloat16"
    timed = clock(monkeypatch, {faster: 0.5, slower: 1.0})
    # WHEN the checkpoint loads there for the first time, no dtype asked
    engine = Engine.load(bf16_checkpoint, device="cpu")
    # THEN both were timed in turns (a warm-up and the rounds), and it computes in the faster
    assert timed == ["float32", "bfloat16"] * (cpu_dtype.ROUNDS + 1)
    assert engine.info.dtype == faster
    assert engine.info.path == str(bf16_checkpoint)
    # AND the choice is remembered with both timings, for this CPU and torch
    (entry,) = json.loads(unpinned.read_text()).values()
    assert entry["dtype"] == faster
    assert entry["seconds"] == {faster: 0.5, slower: 1.0}
    assert entry["torch"] == torch.__version__

    # WHEN it loads again THEN nothing is timed and the same dtype comes
    timed.clear()
    assert Engine.load(bf16_checkpoint, device="cpu").info.dtype == faster
    assert timed == []


def test_the_real_timing_picks_one_and_the_engine_answers(
    bf16_checkpoint: Path, unpinned: Path
) -> None:
    # WHEN the two dtypes are timed for real on the tiny model
    engine = Engine.load(bf16_checkpoint, device="cpu")
    # THEN the faster of the recorded times was kept, and the engine it returned answers
    (entry,) = json.loads(unpinned.read_text()).values()
    assert set(entry["seconds"]) == {"float32", "bfloat16"}
    assert all(s > 0 for s in entry["seconds"].values())
    assert entry["dtype"] == min(entry["seconds"], key=entry["seconds"].get)
    assert engine.info.dtype == entry["dtype"]
    session = engine.new_session()
    session.add_user_message("hello")
    assert sum(len(d.token_ids) for d in session.generate()) > 0


def test_pinned_dtype_and_explicit_dtype_skip_the_timing(
    bf16_checkpoint: Path, unpinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed = clock(monkeypatch, {"float32": 1.0, "bfloat16": 0.5})
    # an explicit dtype is kept, and nothing is timed or written
    assert Engine.load(bf16_checkpoint, device="cpu", dtype="float32").info.dtype == "float32"
    # INFINITEVL_CPU_DTYPE pins one
    monkeypatch.setenv(cpu_dtype.ENV, "float32")
    assert Engine.load(bf16_checkpoint, device="cpu").info.dtype == "float32"
    monkeypatch.setenv(cpu_dtype.ENV, "BFloat16")
    assert Engine.load(bf16_checkpoint, device="cpu").info.dtype == "bfloat16"
    assert timed == []
    assert not unpinned.exists()
    # a value it does not know is named in the error
    monkeypatch.setenv(cpu_dtype.ENV, "fp8")
    with pytest.raises(InputError, match="INFINITEVL_CPU_DTYPE must be float32, bfloat16 or auto"):
        Engine.load(bf16_checkpoint, device="cpu")


def test_a_large_checkpoint_runs_as_stored_untimed(
    bf16_checkpoint: Path, unpinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import engine as engine_module

    timed = clock(monkeypatch, {"float32": 0.5, "bfloat16": 1.0})
    monkeypatch.setattr(engine_module, "CPU_FLOAT32_MAX_STORED_BYTES", 1024)
    assert Engine.load(bf16_checkpoint, device="cpu").info.dtype == "bfloat16"
    assert timed == []


def test_an_unreadable_cache_is_timed_again_and_rewritten(
    bf16_checkpoint: Path, unpinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a cache file cut short (a crash while another tool wrote it)
    unpinned.parent.mkdir(parents=True)
    unpinned.write_text('{"abc": {"dtype": "bfl')
    timed = clock(monkeypatch, {"float32": 0.5, "bfloat16": 1.0})
    # WHEN the checkpoint loads THEN it is timed again and the file is whole again
    assert Engine.load(bf16_checkpoint, device="cpu").info.dtype == "float32"
    assert timed
    assert [e["dtype"] for e in json.loads(unpinned.read_text()).values()] == ["float32"]


def test_the_timing_holds_for_one_cpu_torch_threads_and_architecture(
    tmp_path: Path, bf16_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = cpu_dtype.timing_key(bf16_checkpoint)
    # the same architecture with other weights shares the timing
    other_weights = write_tiny_checkpoint(tmp_path / "seed1", dtype=torch.bfloat16, seed=1)
    assert cpu_dtype.timing_key(other_weights) == key
    # another thread count, another torch or another CPU does not
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert cpu_dtype.timing_key(bf16_checkpoint) != key
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert cpu_dtype.timing_key(bf16_checkpoint) != key
    monkeypatch.undo()
    monkeypatch.setattr(cpu_dtype, "cpu_name", lambda: "another CPU")
    assert cpu_dtype.timing_key(bf16_checkpoint) != key
