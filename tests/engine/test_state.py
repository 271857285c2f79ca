"""ModelState: allocation, clone, save/load round trip, and every way a state file can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import tiny_config
from engine.errors import StateError
from engine.state import FullAttnState, GDNState, ModelState, SWAState

CFG = tiny_config()  # sliding, linear, sliding, linear
FP = "fingerprint-a"


def _filled(config=CFG, batch: int = 2, dtype=torch.bfloat16) -> ModelState:
    state = ModelState.new(config.text, batch=batch, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    for st in state.layers:
        for t in st.tensors().values():
            t.copy_(torch.randn(t.shape, generator=gen))
        if not isinstance(st, GDNState):
            st.seen = 11
    state.position, state.tokens_seen = 9, 11
    return state


def test_new_allocates_fixed_shapes_and_dtypes():
    state = ModelState.new(CFG.text, batch=3, dtype=torch.bfloat16)
    t = CFG.text
    swa, gdn = state.layers[0], state.layers[1]
    assert isinstance(swa, SWAState) and isinstance(gdn, GDNState)
    assert swa.k.shape == (3, t.num_key_value_heads, t.sliding_window, t.head_dim)
    assert gdn.S.shape == (3, t.num_linear_heads, t.linear_head_dim, t.linear_value_head_dim)
    assert gdn.S.dtype == torch.float32 and swa.k.dtype == torch.bfloat16
    assert gdn.conv_v.shape == (3, t.linear_value_dim, t.conv_size - 1)
    assert state.batch == 3 and state.position == 0 and state.tokens_seen == 0


def test_save_load_round_trip(tmp_path):
    state = _filled()
    path = tmp_path / "s.safetensors"
    state.save(path, FP)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left
    loaded = ModelState.load(path, FP, CFG.text)
    assert (loaded.position, loaded.tokens_seen, loaded.layer_types) == (9, 11, state.layer_types)
    for a, b in zip(state.layers, loaded.layers, strict=True):
        assert type(a) is type(b)
        for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)
        if not isinstance(a, GDNState):
            assert a.seen == b.seen == 11
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["fingerprint"] == FP
    assert json.loads(meta["layer_types"]) == list(CFG.text.layer_types)
    assert len(meta["checksum"]) == 64


def test_full_attention_state_round_trip_and_growth(tmp_path):
    cfg = tiny_config(("full_attention", "linear_attention"))
    state = ModelState.new(cfg.text, batch=1)
    full = state.layers[0]
    assert isinstance(full, FullAttnState)
    k = torch.randn(1, cfg.text.num_key_value_heads, 21, cfg.text.head_dim)
    keys, _ = full.append(k, k + 1)
    keys2, values2 = full.append(k[:, :, :3], k[:, :, :3])
    assert full.seen == 24 and torch.equal(keys2[:, :, :21], k) and torch.equal(keys, k)
    state.save(tmp_path / "f.safetensors", FP)
    loaded = ModelState.load(tmp_path / "f.safetensors", FP, cfg.text)
    assert loaded.layers[0].seen == 24
    assert torch.equal(loaded.layers[0].tensors()["v"], values2)


def test_clone_is_independent():
    state = _filled()
    fork = state.clone()
    fork.layers[0].k.zero_()
    fork.layers[1].S.add_(1)
    fork.layers[0].seen += 5
    fork.position += 1
    assert state.layers[0].k.abs().sum() > 0 and state.layers[0].seen == 11
    assert not torch.equal(state.layers[1].S, fork.layers[1].S) and state.position == 9


def _partly_written(written: int, batch: int = 3) -> ModelState:
    """A state whose rings hold `written` tokens (slots past them zero, as a new state's)."""
    state = _filled(batch=batch)
    for st in state.layers:
        if not isinstance(st, GDNState):
            st.k[:, :, written:] = 0
            st.v[:, :, written:] = 0
            st.seen = written
    return state


def _assert_rows(picked: ModelState, state: ModelState, rows: list[int]) -> None:
    index = torch.tensor(rows)
    assert picked.batch == len(rows) and picked.position == state.position
    for mine, theirs in zip(picked.layers, state.layers, strict=True):
        assert getattr(mine, "seen", None) == getattr(theirs, "seen", None)
        for name, t in mine.tensors().items():
            assert torch.equal(t, theirs.tensors()[name].index_select(0, index)), name


@pytest.mark.parametrize("written", [0, 5, CFG.text.sliding_window, 3 * CFG.text.sliding_window])
def test_select_copies_rows_of_a_partly_written_ring(written):
    state = _partly_written(written)
    _assert_rows(state.select([2, 0, 2, 1]), state, [2, 0, 2, 1])


def test_select_into_a_buffer_reuses_its_rows():
    state = _partly_written(5)
    buffer = state.zeros_like(4)
    picked = state.select([1, 1, 0], out=buffer)
    _assert_rows(picked, state, [1, 1, 0])
    for mine, theirs in zip(picked.layers, buffer.layers, strict=True):
        for name, t in mine.tensors().items():
            assert t.data_ptr() == theirs.tensors()[name].data_ptr()
    # the buffer's slots past the ones written stay zero, so a later, longer copy into it is whole
    later = _partly_written(7)
    _assert_rows(later.select([0, 2], out=buffer), later, [0, 2])


def test_select_ignores_a_buffer_it_cannot_use():
    state = _partly_written(5)
    other_window = ModelState.new(tiny_config(sliding_window=16).text, 4, dtype=torch.bfloat16)
    for out in (state.zeros_like(2), state, other_window, state.zeros_like(4).select([0])):
        picked = state.select([2, 1, 0], out=out)
        _assert_rows(picked, state, [2, 1, 0])
        assert all(
            t.data_ptr() != u.data_ptr()
            for mine, theirs in zip(picked.layers, out.layers, strict=True)
            for t, u in zip(mine.tensors().values(), theirs.tensors().values(), strict=True)
        )


def test_zeros_like_has_the_sizes_and_dtypes_of_the_state():
    state = _filled()
    zeros = state.zeros_like(5)
    assert zeros.batch == 5 and (zeros.position, zeros.tokens_seen) == (0, 0)
    for mine, theirs in zip(zeros.layers, state.layers, strict=True):
        assert getattr(mine, "seen", 0) == 0
        for name, t in mine.tensors().items():
            other = theirs.tensors()[name]
            assert t.shape[1:] == other.shape[1:] and t.dtype == other.dtype
            assert not t.any()


def test_nbytes_counts_every_tensor():
    state = ModelState.new(CFG.text, dtype=torch.bfloat16)
    expected = sum(t.nbytes for st in state.layers for t in st.tensors().values())
    assert state.nbytes() == expected > 0


def test_load_rejects_another_models_state(tmp_path):
    _filled().save(tmp_path / "s.safetensors", FP)
    with pytest.raises(StateError, match="belongs to model 'fingerprint-a', not 'other'"):
        ModelState.load(tmp_path / "s.safetensors", "other", CFG.text)


def test_load_rejects_tampered_and_truncated_files(tmp_path):
    path = tmp_path / "s.safetensors"
    _filled().save(path, FP)
    blob = bytearray(path.read_bytes())
    tampered = tmp_path / "tampered.safetensors"
    blob[-3] ^= 0xFF  # a byte of the last tensor
    tampered.write_bytes(bytes(blob))
    with pytest.raises(StateError, match="checksum mismatch"):
        ModelState.load(tampered, FP, CFG.text)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StateError, match="not a readable state file"):
        ModelState.load(truncated, FP, CFG.text)
    with pytest.raises(StateError, match="no state file"):
        ModelState.load(tmp_path / "missing.safetensors", FP, CFG.text)


def test_load_rejects_edited_metadata(tmp_path):
    path = tmp_path / "s.safetensors"
    state = _filled()
    state.save(path, FP)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["tokens_seen"] = "999999"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(StateError, match="checksum mismatch"):
        ModelState.load(path, FP, CFG.text)


def test_load_rejects_other_shapes_and_layer_types(tmp_path):
    path = tmp_path / "s.safetensors"
    _filled().save(path, FP)
    wider_window = tiny_config(sliding_window=16)
    with pytest.raises(StateError, match=r"layers\.0\.k has shape \[2, 2, 8, 16\], model expects"):
        ModelState.load(path, FP, wider_window.text)
    other_pattern = tiny_config(("linear_attention",) * 4)
    with pytest.raises(StateError, match="layer_types"):
        ModelState.load(path, FP, other_pattern.text)


def test_new_rejects_bad_batch():
    with pytest.raises(StateError, match="batch must be positive, got 0"):
        ModelState.new(CFG.text, batch=0)
