"""Sliding-window prefill in Triton: flash attention that visits only the key blocks of the band.

One program per (block of BM queries, batch x query head) walks the key blocks that its queries
can see (at most BM + W keys), with an online softmax in float32: first the blocks all its
queries see whole, without a mask, then the band's edge blocks with it. When the query blocks are too few to fill the GPU (a 448x448 frame's
256 tokens over a full 8K window: 32 programs), each band is cut into runs of key blocks, one
program each, and a second kernel combines their partial softmaxes (flash decoding). Keys are the ring's valid entries in token order followed by the new
keys, so the band is the same whether the ring is empty, partial or wrapped. Forward only: the
dispatcher sends calls that need grad to ``prefill_sdpa``. ``TRITON_INTERPRET=1`` runs it on CPU.
"""

import logging
import os

import torch
import triton
import triton.language as tl

from kernels import shared_memory
from kernels.swa.reference import check_inputs, ring_then

log = logging.getLogger(__name__)

LOG2E = 1.4426950408889634


# where a key block's keys and values come from (``_load_kv``'s SRC)
SRC_KEYS = tl.constexpr(0)  # one [L, D] tensor in token order
SRC_RING = tl.constexpr(1)  # a full ring read in place from slot ``start`` on (keys before W)
SRC_NEW = tl.constexpr(2)  # the new tokens' own tensors (keys from W on)
SRC_BOTH = tl.constexpr(3)  # a block across W (only when W is not a multiple of the block)


@triton.jit
def _load_kv(
    keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, offs_n, offs_d, mask_d, L,
    W: tl.constexpr, D: tl.constexpr, MASKED: tl.constexpr, SRC: tl.constexpr,
):  # fmt: skip
    """Keys and values ``offs_n`` of the band, from where SRC says. One source a block keeps one
    load per operand (the loop's pipelined copies); only SRC_BOTH loads twice and selects.
    Only MASKED (edge) blocks can reach past L."""
    if MASKED:  # noqa: SIM108 (a constexpr branch)
        mask = (offs_n < L)[:, None] & mask_d[None, :]
    else:
        mask = mask_d[None, :]
    p_ring = kv_base + ((start + offs_n) % W)[:, None] * D + offs_d[None, :]
    p_new = new_base + (offs_n - W)[:, None] * stride_new_t + offs_d[None, :]
    if SRC == SRC_RING:
        b_k = tl.load(keys + p_ring, mask=mask, other=0.0)
        b_v = tl.load(values + p_ring, mask=mask, other=0.0)
    elif SRC == SRC_NEW:
        b_k = tl.load(k_new + p_new, mask=mask, other=0.0)
        b_v = tl.load(v_new + p_new, mask=mask, other=0.0)
    elif SRC == SRC_BOTH:
        m_ring = (offs_n < W)[:, None] & mask
        m_new = (offs_n >= W)[:, None] & mask
        b_k = tl.where(
            m_ring, tl.load(keys + p_ring, mask=m_ring, other=0.0),
            tl.load(k_new + p_new, mask=m_new, other=0.0),
        )  # fmt: skip
        b_v = tl.where(
            m_ring, tl.load(values + p_ring, mask=m_ring, other=0.0),
            tl.load(v_new + p_new, mask=m_new, other=0.0),
        )  # fmt: skip
    else:
        p_kv = kv_base + offs_n[:, None] * D + offs_d[None, :]
        b_k = tl.load(keys + p_kv, mask=mask, other=0.0)
        b_v = tl.load(values + p_kv, mask=mask, other=0.0)
    return b_k, b_v


@triton.jit
def _band_block(
    b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, n0, offs_m, offs_d,
    mask_d, off, L, qk_scale, m_i, l_i, acc,
    W: tl.constexpr, D: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr,
    SRC: tl.constexpr,
):  # fmt: skip
    """One key block of the online softmax; MASKED applies the band (and the end of the keys)."""
    offs_n = n0 + tl.arange(0, BN)
    b_k, b_v = _load_kv(
        keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, offs_n, offs_d, mask_d,
        L, W, D, MASKED, SRC,
    )  # fmt: skip
    if IEEE:
        s = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(b_q, tl.trans(b_k))
    s = s * qk_scale  # log2 units
    if MASKED:
        rel = offs_n[None, :] - (offs_m[:, None] + off)  # key position - query position
        visible = (rel <= 0) & (rel > -W) & (offs_n < L)[None, :]
        s = tl.where(visible, s, float("-inf"))  # [BM, BN]
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
    return m_new, l_i, acc


@triton.jit
def _band_run(
    b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, n_lo, n_hi, offs_m,
    offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc,
    W: tl.constexpr, D: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr,
    RING: tl.constexpr,
):  # fmt: skip
    """The key blocks from ``n_lo`` (a multiple of BN) to ``n_hi``. RING: the blocks before W from
    the ring alone, those from W on from the new keys alone, and a block across W (W not a
    multiple of BN) from both."""
    if RING:
        w_lo: tl.constexpr = W // BN * BN
        w_hi: tl.constexpr = (W + BN - 1) // BN * BN
        for n0 in range(n_lo, tl.minimum(n_hi, w_lo), BN):
            m_i, l_i, acc = _band_block(
                b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, n0,
                offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE, MASKED,
                SRC_RING,
            )  # fmt: skip
        if w_hi != w_lo:  # a constexpr branch: the 4B model's window is whole blocks
            for n0 in range(tl.maximum(n_lo, w_lo), tl.minimum(n_hi, w_hi), BN):
                m_i, l_i, acc = _band_block(
                    b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, n0,
                    offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE,
                    MASKED, SRC_BOTH,
                )  # fmt: skip
        for n0 in range(tl.maximum(n_lo, w_hi), n_hi, BN):
            m_i, l_i, acc = _band_block(
                b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, n0,
                offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE, MASKED,
                SRC_NEW,
            )  # fmt: skip
    else:
        for n0 in range(n_lo, n_hi, BN):
            m_i, l_i, acc = _band_block(
                b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, n0,
                offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE, MASKED,
                SRC_KEYS,
            )  # fmt: skip
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["T", "L"])
def swa_prefill_kernel(
    q,
    keys,
    values,
    k_new,
    v_new,
    seen,
    stride_new_b,
    stride_new_h,
    stride_new_t,
    o,
    o_part,
    m_part,
    l_part,
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
    NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
    RING: tl.constexpr = False,
):
    # RING: keys/values are a full ring [B, HKV, W, D] whose oldest slot is seen % W (seen read
    # from the device: one CUDA graph serves every frame) and k_new/v_new the T new tokens'; else
    # keys/values hold all L = W' + T in token order and k_new, v_new, seen are not read.
    # NUM_SPLITS > 1: program_id(2) takes one of NUM_SPLITS runs of the band's key blocks and
    # writes its unnormalised output, running max and sum (log2 units) for the combine kernel
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
    if RING:
        kv_base = (i_b * HKV + i_kv) * W * D
        new_base = i_b * stride_new_b + i_kv * stride_new_h
        start = tl.load(seen) % W
    else:
        kv_base = (i_b * HKV + i_kv) * L * D
        new_base = kv_base
        start = 0

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    # query i sees keys i + off - W + 1 ... i + off
    lo = tl.maximum(i_m * BM + off - W + 1, 0)
    lo = (lo // BN) * BN
    hi = tl.minimum(i_m * BM + BM + off, L)
    if NUM_SPLITS > 1:
        per = tl.cdiv(tl.cdiv(hi - lo, BN), NUM_SPLITS) * BN  # keys of each run, whole blocks
        lo = lo + tl.program_id(2) * per
        hi = tl.minimum(lo + per, hi)
    # the key blocks every query of the block sees whole (no mask: most of a band) first, then the
    # edge blocks with the band's mask; whole blocks end before L (key n <= query + off < L)
    m0 = i_m * BM
    full_lo = tl.minimum(tl.maximum(tl.cdiv(m0 + BM + off - W, BN) * BN, lo), hi)
    full_hi = tl.maximum(tl.minimum((m0 + off + 1) // BN * BN, hi), full_lo)
    m_i, l_i, acc = _band_run(
        b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, full_lo, full_hi,
        offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE, False, RING,
    )  # fmt: skip
    m_i, l_i, acc = _band_run(
        b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, lo, full_lo,
        offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE, True, RING,
    )  # fmt: skip
    m_i, l_i, acc = _band_run(
        b_q, keys, values, k_new, v_new, kv_base, new_base, stride_new_t, start, full_hi, hi,
        offs_m, offs_d, mask_d, off, L, qk_scale, m_i, l_i, acc, W, D, BN, IEEE, True, RING,
    )  # fmt: skip
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        p_o = o + (i_bh * T + offs_m[:, None]) * D + offs_d[None, :]
        tl.store(p_o, out.to(o.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    else:
        # a run with no visible key keeps m = -inf, l = 0, acc = 0: weight zero in the combine
        row = (tl.program_id(2) * tl.num_programs(1) + i_bh) * T + offs_m  # [NUM_SPLITS, B*H, T]
        p_part = o_part + row[:, None] * D + offs_d[None, :]
        tl.store(p_part, acc, mask=mask_m[:, None] & mask_d[None, :])
        tl.store(m_part + row, m_i, mask=mask_m)
        tl.store(l_part + row, l_i, mask=mask_m)


@triton.jit(do_not_specialize=["T"])
def swa_prefill_combine_kernel(
    o_part, m_part, l_part, o, T, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, NUM_SPLITS: tl.constexpr
):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    BH = tl.num_programs(1)
    offs_m = i_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    mask_m, mask_d = offs_m < T, offs_d < D
    m = tl.full([BM], float("-inf"), tl.float32)
    for i_s in tl.static_range(NUM_SPLITS):
        m = tl.maximum(m, tl.load(m_part + (i_s * BH + i_bh) * T + offs_m, mask=mask_m, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    den = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    for i_s in tl.static_range(NUM_SPLITS):
        row = (i_s * BH + i_bh) * T + offs_m
        w = tl.math.exp2(tl.load(m_part + row, mask=mask_m, other=float("-inf")) - m_safe)
        den += w * tl.load(l_part + row, mask=mask_m, other=0.0)
        part = tl.load(o_part + row[:, None] * D + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        acc += part * w[:, None]
    out = acc / tl.where(den > 0, den, 1.0)[:, None]
    p_o = o + (i_bh * T + offs_m[:, None]) * D + offs_d[None, :]
    tl.store(p_o, out.to(o.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (one shape) step alike along every dimension longer than one: the
    kernel reads both with ``a``'s strides. A dimension of size 1 is never stepped along, and
    ``.contiguous()`` leaves any stride there (a head or batch of one)."""
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride(), strict=True))


def prefill_splits(B: int, H: int, T: int, block_m: int, device: torch.device) -> int:
    """How many runs of key blocks each query block is cut into: enough programs for about two
    per multiprocessor (a few hundred queries over a full 8K window otherwise keep most of the GPU
    idle), 1 when the query blocks alone fill it."""
    if device.type != "cuda":
        return 1
    programs = triton.cdiv(T, block_m) * B * H
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(16, (2 * sms) // programs))


# prompts of at least this many tokens take wider key blocks (benchmarks/swa_blocks.py on an H100:
# 1,816 -> 1,721 us at 16,384 tokens; the 128K prefill's 9 launches 195 -> 181 ms)
LONG_PROMPT = 16384


def block_shape(
    dtype: torch.dtype, *, ring: bool = False, tokens: int = 0, head_dim: int = 128,
    limit: int | None = None,
) -> tuple[int, int, int, int]:  # fmt: skip
    """(query rows per block, keys per block, warps, stages) of a prefill.

    bf16/fp16 shapes are the fastest ``benchmarks/swa_blocks.py`` timed on an H100: a frame over a
    full ring read in place (``ring``) takes 64 rows and 64 keys (49 against 64 us at 256
    tokens, with the 4 splits ``prefill_splits`` then picks), a prompt of ``LONG_PROMPT`` tokens
    or more 128 rows and 128 keys, shorter prompts 128 and 64. float32 tiles are twice as wide,
    so smaller blocks. Where a shape needs more shared memory than ``limit`` bytes (the GPU's,
    ``kernels.shared_memory.limit``), stages, then keys, then rows are halved until it fits.
    """
    if dtype == torch.float32:
        block_m, block_n, warps, stages = 64, 32, 4, 2
    elif ring:
        block_m, block_n, warps, stages = 64, 64, 4, 3
    elif tokens >= LONG_PROMPT:
        block_m, block_n, warps, stages = 128, 128, 8, 3
    else:
        block_m, block_n, warps, stages = 128, 64, 8, 3
    block_n, stages = shared_memory.fit(block_m, block_n, stages, head_dim, dtype.itemsize, limit)
    while (
        limit is not None and block_m > 16
        and shared_memory.program_bytes(block_m, block_n, stages, head_dim, dtype.itemsize) > limit
    ):  # fmt: skip
        block_m, warps = block_m // 2, 4
    return block_m, block_n, warps, stages


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
    *,
    num_splits: int = 1,
    new: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Launch ``swa_prefill_kernel`` with an explicit block shape (for ``prefill`` and the bench).

    Args:
        q: [B, H, T, D] (unit stride on D).  keys, values: [B, Hkv, L, D] contiguous, L >= T, the
            last T of them the new tokens'.  W: the window.  scale: multiplies q k^T.
        num_splits: runs of key blocks each query block's band is cut into, one program each;
            more than one adds ``swa_prefill_combine_kernel``.
        new: (k, v [B, Hkv, T, D] unit stride on D, seen: 1-element int64 tensor): keys and
            values are then a full ring [B, Hkv, W, D], read in place from slot seen % W on,
            followed by these (L = W + T).
    Returns:
        o: [B, H, T, D] contiguous, in the dtype of q.
    """
    B, H, T, D = q.shape
    Hkv, L = keys.shape[1], keys.shape[2]
    assert keys.is_contiguous() and values.is_contiguous(), "keys/values must be contiguous [B, Hkv, L, D]"
    assert q.stride(-1) == 1, "q needs unit stride on D"
    if new is not None:
        assert L == W, f"a ring of {L} slots for a window of {W}"
        k_new, v_new, _ = new
        assert k_new.shape == v_new.shape == (B, Hkv, T, D) and same_layout(k_new, v_new), (
            "new keys and values [B, Hkv, T, D], of one layout"
        )
        assert k_new.stride(-1) == 1, "new keys need unit stride on D"
        L = W + T
    assert L >= T, f"{L} keys for {T} queries"
    o = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
    o_part = m_part = l_part = o  # not read with one run
    if num_splits > 1:
        o_part = torch.empty(num_splits, B * H, T, D, dtype=torch.float32, device=q.device)
        m_part = torch.empty(num_splits, B * H, T, dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
    # Triton's CPU interpreter multiplies bf16 dot operands wrongly: upcast there (tests only)
    ieee = q.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    BD = triton.next_power_of_2(D)
    grid = (triton.cdiv(T, block_m), B * H, num_splits)
    ring = new is not None
    k_new, v_new, seen = new if new is not None else (keys, values, keys)  # not read without a ring
    swa_prefill_kernel[grid](
        q, keys, values, k_new, v_new, seen, k_new.stride(0), k_new.stride(1), k_new.stride(2), o,
        o_part, m_part, l_part, q.stride(0), q.stride(1), q.stride(2), T, L, scale * LOG2E, H=H,
        HKV=Hkv, W=W, D=D, BD=BD, BM=block_m, BN=block_n, NUM_SPLITS=num_splits, IEEE=ieee,
        RING=ring, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if num_splits > 1:
        swa_prefill_combine_kernel[(triton.cdiv(T, 64), B * H)](
            o_part, m_part, l_part, o, T, D=D, BD=BD, BM=64, NUM_SPLITS=num_splits, num_warps=4
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
    num_splits: int = 0,
) -> torch.Tensor:
    """Banded causal attention of T new tokens over the ring's valid entries and themselves.

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D].  ring_k, ring_v: [B, Hkv, W, D], not modified.
        seen: tokens written before this call.  scale: multiplies q k^T.
        num_splits: runs of key blocks per query block (0: ``prefill_splits`` picks; more than
            one adds a combine kernel).
    Returns:
        o: [B, H, T, D] in the dtype of q (not differentiable: use ``prefill_sdpa`` for training).
    """
    check_inputs(q, k, v, ring_k, ring_v, seen)
    W = ring_k.shape[2]
    if seen:
        keys, values = ring_then(ring_k, k, seen, k.dtype), ring_then(ring_v, v, seen, v.dtype)
    else:
        keys, values = k.contiguous(), v.contiguous()
    return _launch_default(q, keys, values, W, scale, num_splits)


def _launch_default(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, W: int, scale: float,
    num_splits: int, new: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """``launch_prefill`` with ``block_shape``'s block and, for ``num_splits`` 0, the runs
    ``prefill_splits`` picks."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    block_m, block_n, warps, stages = block_shape(
        q.dtype, ring=new is not None, tokens=q.shape[2], head_dim=q.shape[-1],
        limit=shared_memory.limit(q.device),
    )  # fmt: skip
    splits = num_splits or prefill_splits(q.shape[0], q.shape[1], q.shape[2], block_m, q.device)
    return launch_prefill(
        q, keys, values, W, scale, block_m, block_n, warps, stages, num_splits=splits, new=new
    )


def prefill_full_ring(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: torch.Tensor,
    *,
    scale: float,
    num_splits: int = 0,
) -> torch.Tensor:
    """``prefill`` over a full ring (``seen >= W``) read in place, ``seen`` a tensor on the device.

    The ring's slots are read from the oldest (seen % W) on and the new keys from k, v: no copy
    of the ring in token order and no host sync (a frame's CUDA graph). Forward only.

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D] (unit stride on D).  ring_k, ring_v: [B, Hkv, W, D]
            contiguous, full, not modified.  seen: 0-d or 1-element int64 tensor, >= W.
    Returns:
        o: [B, H, T, D] in the dtype of q.
    """
    check_inputs(q, k, v, ring_k, ring_v, 0)
    assert ring_k.dtype == k.dtype == v.dtype == ring_v.dtype, "ring and new keys of one dtype"
    assert seen.numel() == 1 and seen.dtype == torch.int64, "seen: one int64 on the device"
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    if not same_layout(k, v):
        k, v = k.contiguous(), v.contiguous()
    W = ring_k.shape[2]
    return _launch_default(q, ring_k, ring_v, W, scale, num_splits, new=(k, v, seen.reshape(1)))
