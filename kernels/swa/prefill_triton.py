"""Sliding-window prefill in Triton: flash attention that visits only the key blocks of the band.

One program per (block of BM queries, batch x query head) walks the key blocks that its queries
can see (at most BM + W keys), with an online softmax in float32; masked-out keys cost nothing
beyond the two edge blocks. Keys are the ring's valid entries in token order followed by the new
keys, so the band is the same whether the ring is empty, partial or wrapped. Forward only: the
dispatcher sends calls that need grad to ``prefill_sdpa``. ``TRITON_INTERPRET=1`` runs it on CPU.
"""

import logging
import os

import torch
import triton
import triton.language as tl

from kernels.swa.reference import check_inputs, ring_in_order

log = logging.getLogger(__name__)

LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["T", "L"])
def swa_prefill_kernel(
    q,
    keys,
    values,
    o,
    stride_q_b,
    stride_q_h,
    stride_q_t,
    T,
    L,
    qk_scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    W: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    IEEE: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    i_kv = i_h // (H // HKV)
    # key j holds the token at query index j - off: the L - T ring entries come first
    off = L - T
    offs_m = i_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    mask_m, mask_d = offs_m < T, offs_d < D
    p_q = q + i_b * stride_q_b + i_h * stride_q_h + offs_m[:, None] * stride_q_t + offs_d[None, :]
    b_q = tl.load(p_q, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    kv_base = (i_b * HKV + i_kv) * L * D

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    # query i sees keys i + off - W + 1 ... i + off
    lo = tl.maximum(i_m * BM + off - W + 1, 0)
    lo = (lo // BN) * BN
    hi = tl.minimum(i_m * BM + BM + off, L)
    for n0 in range(lo, hi, BN):
        offs_n = n0 + tl.arange(0, BN)
        mask_n = offs_n < L
        p_kv = kv_base + offs_n[:, None] * D + offs_d[None, :]
        b_k = tl.load(keys + p_kv, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        b_v = tl.load(values + p_kv, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        if IEEE:
            s = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(b_q, tl.trans(b_k))
        rel = offs_n[None, :] - (offs_m[:, None] + off)  # key position - query position
        visible = (rel <= 0) & (rel > -W) & mask_n[None, :]
        s = tl.where(visible, s * qk_scale, float("-inf"))  # [BM, BN], log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # rows with nothing visible yet keep m = -inf; subtract 0 there instead of -inf
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, b_v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    p_o = o + (i_bh * T + offs_m[:, None]) * D + offs_d[None, :]
    tl.store(p_o, out.to(o.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def launch_prefill(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    W: int,
    scale: float,
    block_m: int = 128,
    block_n: int = 64,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """Launch ``swa_prefill_kernel`` with an explicit block shape (for ``prefill`` and the bench).

    Args:
        q: [B, H, T, D] (unit stride on D).  keys, values: [B, Hkv, L, D] contiguous, L >= T, the
            last T of them the new tokens'.  W: the window.  scale: multiplies q k^T.
    Returns:
        o: [B, H, T, D] contiguous, in the dtype of q.
    """
    B, H, T, D = q.shape
    Hkv, L = keys.shape[1], keys.shape[2]
    assert keys.is_contiguous() and values.is_contiguous(), "keys/values must be contiguous [B, Hkv, L, D]"
    assert q.stride(-1) == 1, "q needs unit stride on D"
    assert L >= T, f"{L} keys for {T} queries"
    o = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
    # Triton's CPU interpreter multiplies bf16 dot operands wrongly: upcast there (tests only)
    ieee = q.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    swa_prefill_kernel[(triton.cdiv(T, block_m), B * H)](
        q,
        keys,
        values,
        o,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        T,
        L,
        scale * LOG2E,
        H=H,
        HKV=Hkv,
        W=W,
        D=D,
        BD=triton.next_power_of_2(D),
        BM=block_m,
        BN=block_n,
        IEEE=ieee,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return o


def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int,
    *,
    scale: float,
) -> torch.Tensor:
    """Banded causal attention of T new tokens over the ring's valid entries and themselves.

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D].  ring_k, ring_v: [B, Hkv, W, D], not modified.
        seen: tokens written before this call.  scale: multiplies q k^T.
    Returns:
        o: [B, H, T, D] in the dtype of q (not differentiable: use ``prefill_sdpa`` for training).
    """
    check_inputs(q, k, v, ring_k, ring_v, seen)
    W = ring_k.shape[2]
    if seen:
        keys = torch.cat([ring_in_order(ring_k, seen).to(k.dtype), k], dim=2)
        values = torch.cat([ring_in_order(ring_v, seen).to(v.dtype), v], dim=2)
    else:
        keys, values = k.contiguous(), v.contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    if q.dtype == torch.float32:
        # float32 tiles are twice as wide: smaller blocks and stages keep them in shared memory
        return launch_prefill(q, keys, values, W, scale, block_m=64, block_n=32, num_warps=4, num_stages=2)
    return launch_prefill(q, keys, values, W, scale)
