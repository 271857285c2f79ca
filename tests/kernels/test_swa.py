"""Sliding-window attention over a ring buffer == full attention under an explicit banded mask."""

import pytest
import torch
import torch.nn.functional as F

from kernels import swa
from kernels._testing import assert_close
from kernels.swa import reference

B, H, HKV, D, W = 2, 4, 2, 8, 16
SCALE = D**-0.5


def make_qkv(T: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=gen).to(dtype)
    k = torch.randn(B, HKV, T, D, generator=gen).to(dtype)
    v = torch.randn(B, HKV, T, D, generator=gen).to(dtype)
    return q, k, v


def banded_full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = W) -> torch.Tensor:
    """Full attention over all T tokens, query i seeing keys i - window + 1 ... i (float64)."""
    T = q.shape[2]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    mask = (j <= i) & (j > i - window)
    group = q.shape[1] // k.shape[1]
    k64, v64 = (x.double().repeat_interleave(group, dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q.double(), k64, v64, attn_mask=mask, scale=SCALE)


def empty_ring(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(B, HKV, W, D, dtype=dtype), torch.zeros(B, HKV, W, D, dtype=dtype)


@pytest.mark.parametrize(
    "T", [1, 5, W, W + 1, 3 * W + 5], ids=["T1", "T<W", "T=W", "T=W+1", "T=3W+5"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefill_matches_banded_full_attention(T: int, dtype: torch.dtype) -> None:
    q, k, v = make_qkv(T, dtype, seed=T)
    o = swa.prefill(q, k, v, *empty_ring(dtype), 0, scale=SCALE)
    assert o.dtype == dtype
    assert_close("prefill", banded_full(q, k, v), o, 1e-6 if dtype == torch.float32 else 1e-2)


def test_prefill_query_blocks_match_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = make_qkv(4 * W + 3, seed=9)
    ring = empty_ring()
    monkeypatch.setattr(reference, "QUERY_BLOCK", 7)
    o = swa.prefill(q, k, v, *ring, 0, scale=SCALE)
    assert_close("blocked prefill", banded_full(q, k, v), o, 1e-6)


@pytest.mark.parametrize(
    "pieces",
    [(3, 4, 9), (W, W), (W - 1, 2, W + 3), (1,) * 20 + (30,), (2 * W + 1, 5, W, 3)],
    ids=str,
)
def test_prefill_in_pieces_matches_one_piece(pieces: tuple[int, ...]) -> None:
    T = sum(pieces)
    q, k, v = make_qkv(T, seed=T)
    ring_k, ring_v = empty_ring()
    outs, seen = [], 0
    for n in pieces:
        sl = slice(seen, seen + n)
        outs.append(
            swa.prefill(q[:, :, sl], k[:, :, sl], v[:, :, sl], ring_k, ring_v, seen, scale=SCALE)
        )
        swa.write(ring_k, ring_v, k[:, :, sl], v[:, :, sl], seen)
        seen += n
    assert_close("pieces", banded_full(q, k, v), torch.cat(outs, dim=2), 1e-6)


@pytest.mark.parametrize("prompt", [0, 5, W + 3], ids=["no-prompt", "short-prompt", "prompt>W"])
def test_step_decode_matches_banded_full_attention_past_wrap(prompt: int) -> None:
    T = 3 * W + 7
    q, k, v = make_qkv(T, seed=prompt)
    ring_k, ring_v = empty_ring()
    outs = []
    if prompt:
        outs.append(
            swa.prefill(
                q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], ring_k, ring_v, 0, scale=SCALE
            )
        )
        swa.write(ring_k, ring_v, k[:, :, :prompt], v[:, :, :prompt], 0)
    for t in range(prompt, T):
        o = swa.step(q[:, :, t], k[:, :, t], v[:, :, t], ring_k, ring_v, t, scale=SCALE)
        outs.append(o[:, :, None])
    assert_close("decode", banded_full(q, k, v), torch.cat(outs, dim=2), 1e-6)


@pytest.mark.parametrize("pads", [(3, 0), (W + 2, 5)], ids=["in-window", "past-window"])
def test_step_with_pads_leaves_each_rows_padding_out(pads: tuple[int, int]) -> None:
    # rows aligned to one position (engine.model.stack_rows): row b's tokens before pads[b] are
    # padding; its queries see keys max(t - W + 1, pads[b]) ... t, past the ring's wrap too
    T = 3 * W + 7
    q, k, v = make_qkv(T, seed=7)
    ring_k, ring_v = empty_ring()
    first = max(pads)
    swa.write(ring_k, ring_v, k[:, :, :first], v[:, :, :first], 0)
    padding = torch.tensor(pads)
    outs = [
        swa.step(q[:, :, t], k[:, :, t], v[:, :, t], ring_k, ring_v, t, scale=SCALE, pads=padding)
        for t in range(first, T)
    ]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    group = H // HKV
    k64, v64 = (x.double().repeat_interleave(group, dim=1) for x in (k, v))
    for b, pad in enumerate(pads):
        mask = (j <= i) & (j > i - W) & (j >= pad)
        want = F.scaled_dot_product_attention(
            q[b : b + 1, :, first:].double(), k64[b : b + 1], v64[b : b + 1],
            attn_mask=mask[first:], scale=SCALE,
        )  # fmt: skip
        got = torch.stack([o[b] for o in outs], dim=1)[None]
        assert_close(f"row {b}", want, got, 1e-6)
    with pytest.raises(ValueError, match="no padded rows"):
        swa.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], ring_k, ring_v, T, scale=SCALE,
                 pads=padding, use_kernel=True)  # fmt: skip


def test_write_keeps_last_window_in_slots() -> None:
    _, k, v = make_qkv(2 * W + 3)
    ring_k, ring_v = empty_ring()
    swa.write(ring_k, ring_v, k[:, :, :5], v[:, :, :5], 0)
    swa.write(ring_k, ring_v, k[:, :, 5:], v[:, :, 5:], 5)
    for p in range(W + 3, 2 * W + 3):
        assert torch.equal(ring_k[:, :, p % W], k[:, :, p]) and torch.equal(
            ring_v[:, :, p % W], v[:, :, p]
        )


@pytest.mark.parametrize("seen", [0, 3, W, W + 3, 2 * W, 2 * W + 5])
def test_ring_pieces_are_views_in_token_order(seen: int) -> None:
    # token p sits in slot p % W: the valid tokens max(0, seen - W) .. seen - 1, oldest first
    ring = torch.arange(W, dtype=torch.float32).view(1, 1, W, 1).expand(B, HKV, W, D).contiguous()
    pieces = reference.ring_pieces(ring, seen)
    got = torch.cat(pieces, dim=2) if pieces else ring[:, :, :0]
    want_slots = [p % W for p in range(max(0, seen - W), seen)]
    assert got[0, 0, :, 0].tolist() == want_slots
    assert all(p.untyped_storage().data_ptr() == ring.untyped_storage().data_ptr() for p in pieces)


def test_prefill_is_differentiable() -> None:
    q, k, v = (x.requires_grad_() for x in make_qkv(2 * W + 1, seed=3))
    o = swa.prefill(q, k, v, *empty_ring(), 0, scale=SCALE)
    grads = torch.autograd.grad(o.square().sum(), (q, k, v))
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_grads = torch.autograd.grad(banded_full(qd, kd, vd).square().sum(), (qd, kd, vd))
    for name, ref, got in zip("qkv", ref_grads, grads, strict=True):
        assert_close(f"grad {name}", ref, got, 1e-5)


def test_bad_inputs_name_the_values() -> None:
    q, k, v = make_qkv(4)
    with pytest.raises(ValueError, match=r"H=3 must be a multiple of key/value heads Hkv=2"):
        swa.prefill(torch.randn(B, 3, 4, D), k, v, *empty_ring(), 0, scale=SCALE)
    with pytest.raises(ValueError, match=r"seen must be >= 0, got -1"):
        swa.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], *empty_ring(), -1, scale=SCALE)
    with pytest.raises(ValueError, match=r"do not fit ring \(2, 2, 16, 8\)"):
        swa.prefill(q, k[..., :4], v[..., :4], *empty_ring(), 0, scale=SCALE)
