"""Sliding-window decode attention over the ring buffer in Triton (split-K "flash decoding").

The ring of W slots is cut into splits; one program per (batch, kv head, split) attends all query
heads of its group over its slots with an online softmax and writes a partial output and its
log-sum-exp; a second kernel combines the splits. The new key/value is written into slot
``seen % W`` by the program that owns that slot, which also uses it straight from registers, so no
other program reads it in the same launch. ``seen`` may be an int or a 0-d int64 tensor on the
device: the tensor form keeps one launch valid for any position (CUDA graphs).
Same contract as ``reference.step``; ``TRITON_INTERPRET=1`` runs it on CPU tensors for tests.
"""

import logging
import os

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton, shared_memory
from kernels.swa.reference import check_inputs

log = logging.getLogger(__name__)


# seen changes every token: one compiled kernel for all values instead of one per divisibility class
@triton.jit(do_not_specialize=["seen_int"])
def swa_step_split_kernel(
    q,
    k_new,
    v_new,
    ring_k,
    ring_v,
    o_part,
    lse_part,
    seen_ptr,
    seen_int,
    stride_q_b,
    stride_q_h,
    stride_k_b,
    stride_k_h,
    stride_v_b,
    stride_v_h,
    scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    W: tl.constexpr,
    D: tl.constexpr,
    BD: tl.constexpr,
    BG: tl.constexpr,
    BN: tl.constexpr,
    SPLIT: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SEEN_ON_DEVICE: tl.constexpr,
    IEEE: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_triton.begin(PDL)  # kernels.pdl
    i_bk = tl.program_id(0).to(tl.int64)
    i_s = tl.program_id(1)
    i_b, i_kv = i_bk // HKV, i_bk % HKV
    G: tl.constexpr = H // HKV
    # a block, not a conditional expression: the branch is resolved at compile time
    if SEEN_ON_DEVICE:  # noqa: SIM108
        seen = tl.load(seen_ptr).to(tl.int64)
    else:
        seen = seen_int.to(tl.int64)
    n = tl.minimum(seen + 1, W)  # valid slots after this write: 0 .. n-1
    slot = seen % W
    offs_g = tl.arange(0, BG)
    offs_d = tl.arange(0, BD)
    mask_g, mask_d = offs_g < G, offs_d < D
    # query heads i_kv * G ... i_kv * G + G - 1 share this kv head
    p_q = q + i_b * stride_q_b + (i_kv * G + offs_g[:, None]) * stride_q_h + offs_d[None, :]
    b_q = tl.load(p_q, mask=mask_g[:, None] & mask_d[None, :], other=0.0)
    b_k_new = tl.load(k_new + i_b * stride_k_b + i_kv * stride_k_h + offs_d, mask=mask_d, other=0.0)
    b_v_new = tl.load(v_new + i_b * stride_v_b + i_kv * stride_v_h + offs_d, mask=mask_d, other=0.0)
    ring_base = i_bk * W * D
    start = i_s.to(tl.int64) * SPLIT
    stop = tl.minimum(start + SPLIT, n)
    if (slot >= start) & (slot < start + SPLIT):
        tl.store(
            ring_k + ring_base + slot * D + offs_d, b_k_new.to(ring_k.dtype.element_ty), mask=mask_d
        )
        tl.store(
            ring_v + ring_base + slot * D + offs_d, b_v_new.to(ring_v.dtype.element_ty), mask=mask_d
        )

    m_i = tl.full([BG], float("-inf"), tl.float32)
    l_i = tl.zeros([BG], tl.float32)
    acc = tl.zeros([BG, BD], tl.float32)
    for n0 in range(start, stop, BN):
        offs_n = n0 + tl.arange(0, BN)
        mask_n = offs_n < stop
        mask_nd = mask_n[:, None] & mask_d[None, :]
        p_kv = ring_base + offs_n[:, None] * D + offs_d[None, :]
        b_k = tl.load(ring_k + p_kv, mask=mask_nd, other=0.0)
        b_v = tl.load(ring_v + p_kv, mask=mask_nd, other=0.0)
        is_new = (offs_n == slot)[:, None]
        b_k = tl.where(is_new, b_k_new[None, :].to(b_k.dtype), b_k)
        b_v = tl.where(is_new, b_v_new[None, :].to(b_v.dtype), b_v)
        if IEEE:
            s = tl.dot(b_q.to(tl.float32), tl.trans(b_k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(b_q.to(b_k.dtype), tl.trans(b_k))
        s = tl.where(mask_n[None, :], s * scale, float("-inf"))  # [BG, BN]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, b_v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(b_v.dtype), b_v)
        m_i = m_new
    # a split past the valid slots keeps m = -inf, l = 0: weight zero in the combine
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    row = (i_b * H + i_kv * G + offs_g) * NUM_SPLITS + i_s  # [BG] rows of [B, H, NUM_SPLITS]
    tl.store(
        o_part + row[:, None] * D + offs_d[None, :], out, mask=mask_g[:, None] & mask_d[None, :]
    )
    tl.store(lse_part + row, lse, mask=mask_g)


@triton.jit
def swa_step_combine_kernel(
    o_part,
    lse_part,
    o,
    D: tl.constexpr,
    BD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BS: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_triton.begin(PDL)  # kernels.pdl
    i_bh = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BS)
    offs_d = tl.arange(0, BD)
    mask_s, mask_d = offs_s < NUM_SPLITS, offs_d < D
    lse = tl.load(lse_part + i_bh * NUM_SPLITS + offs_s, mask=mask_s, other=float("-inf"))
    # split 0 always holds slot 0, so m is finite
    m = tl.max(lse, axis=0)
    w = tl.exp(lse - m)  # [BS]
    p_o = o_part + (i_bh * NUM_SPLITS + offs_s[:, None]) * D + offs_d[None, :]
    parts = tl.load(p_o, mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(o + i_bh * D + offs_d, out.to(o.dtype.element_ty), mask=mask_d)


def num_splits(B: int, Hkv: int, W: int, device: torch.device, block_n: int) -> tuple[int, int]:
    """(split size, number of splits): about two programs per multiprocessor, whole blocks per split."""
    num_sms = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else 1
    )
    want = max(1, (2 * num_sms) // (B * Hkv))
    split = max(block_n, triton.next_power_of_2(triton.cdiv(W, want)))
    split = triton.cdiv(split, block_n) * block_n
    return split, triton.cdiv(W, split)


def launch_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int | torch.Tensor,
    scale: float,
    split: int,
    block_n: int,
    num_warps: int,
    num_stages: int = 3,
) -> torch.Tensor:
    """Launch the split and combine kernels with explicit block sizes (for ``step`` and the bench)."""
    on_device = isinstance(seen, torch.Tensor)
    B, H, D = q.shape
    Hkv, W = ring_k.shape[1], ring_k.shape[2]
    assert ring_k.is_contiguous() and ring_v.is_contiguous(), (
        "ring buffers must be contiguous [B, Hkv, W, D]"
    )
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, (
        "q, k, v need unit stride on D"
    )
    assert not on_device or (seen.numel() == 1 and seen.device == q.device), (
        "seen tensor: one value on q's device"
    )
    assert split % block_n == 0, f"split {split} must be a multiple of block_n {block_n}"
    splits = triton.cdiv(W, split)
    o_part = torch.empty(B, H, splits, D, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    # Triton's CPU interpreter multiplies bf16 dot operands wrongly: upcast there (tests only)
    ieee = q.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    swa_step_split_kernel[(B * Hkv, splits)](
        q,
        k,
        v,
        ring_k,
        ring_v,
        o_part,
        lse_part,
        seen if on_device else None,
        0 if on_device else seen,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        scale,
        H=H,
        HKV=Hkv,
        W=W,
        D=D,
        BD=triton.next_power_of_2(D),
        BG=group_rows(H // Hkv),
        BN=block_n,
        SPLIT=split,
        NUM_SPLITS=splits,
        SEEN_ON_DEVICE=on_device,
        IEEE=ieee,
        num_warps=num_warps,
        num_stages=num_stages,
        **pdl.launch(q),
    )
    o = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    swa_step_combine_kernel[(B * H,)](
        o_part,
        lse_part,
        o,
        D=D,
        BD=triton.next_power_of_2(D),
        NUM_SPLITS=splits,
        BS=triton.next_power_of_2(splits),
        **pdl.launch(o),
    )
    return o


def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int | torch.Tensor,
    *,
    scale: float,
) -> torch.Tensor:
    """One decode token: store k, v at slot seen % W, then attend over min(seen + 1, W) slots.

    Args:
        q: [B, H, D].  k, v: [B, Hkv, D] (unit stride on D).  ring_k, ring_v: [B, Hkv, W, D]
        contiguous, modified.  seen: tokens before this one, an int or a 0-d int64 device tensor.
        scale: multiplies q k^T.
    Returns:
        o: [B, H, D] in the dtype of q.
    """
    check_inputs(q, k, v, ring_k, ring_v, 0 if isinstance(seen, torch.Tensor) else seen)
    B, Hkv, W, D = ring_k.shape
    H = q.shape[1]
    block_n, stages = block_shape(D, H // Hkv, q.element_size(), shared_memory.limit(q.device))
    split, _ = num_splits(B, Hkv, W, q.device, block_n)
    return launch_step(q, k, v, ring_k, ring_v, seen, scale, split, block_n, 4, stages)


def group_rows(group: int) -> int:
    """Query rows a split program holds for ``group`` query heads a key/value head: a power of two,
    at least 16 (the least a tensor-core dot takes)."""
    return max(16, triton.next_power_of_2(group))


def block_shape(head_dim: int, group: int, itemsize: int, limit: int | None) -> tuple[int, int]:
    """(keys per block, pipeline stages) of a decode step: 64 keys (32 past 128 dims) in 3
    stages, with stages, then keys, then the pipelining cut until the program fits ``limit`` bytes
    of shared memory (an RTX 4090's 99 KiB takes 2 stages at the 4B model's shape)."""
    rows = group_rows(group)
    block_n, stages = shared_memory.fit(
        rows, 64 if head_dim <= 128 else 32, 3, head_dim, itemsize, limit
    )  # fmt: skip
    if (
        limit is not None
        and shared_memory.program_bytes(rows, block_n, stages, head_dim, itemsize) > limit
    ):
        stages = 1  # no pipelining: one buffer of each
    return block_n, stages
