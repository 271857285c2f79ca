"""Rotary position embedding of q and k as one Triton kernel each for the decoder (``rotate_qk``:
torch's ops take six launches a layer) and the vision tower (``rotate_vision_qkv``: seven, over
float32 temporaries four times the size of q and k).

One program per (sequence, token) rotates every head of q and k: reads each half of each head
where the projection left it (views with any strides), and writes one [B, H + Hkv, T, D] tensor
whose two slices are the rotated q and k. Each product and the sum are rounded to the inputs'
dtype as torch's ops round, and the kernel is compiled without fused multiply-adds
(``enable_fp_fusion=False``: in float32 a product fused into the sum skips a rounding torch does),
so the result equals ``reference.rotate_qk``'s on CUDA. The vision kernel, one program per
patch, rotates in float32 as the vision reference does (the tables are float32), rounds once to
the activations' dtype and copies v beside q and k into a new [N, 3, H, D] tensor.
``TRITON_INTERPRET=1`` runs it on CPU tensors.
"""

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton
from kernels.rope.reference import check_inputs, check_vision_inputs


@triton.jit
def _product(a, b, dtype: tl.constexpr):
    return (a.to(tl.float32) * b.to(tl.float32)).to(dtype)


@triton.jit
def rope_kernel(
    q, k, cos, sin, out,
    H, HKV, T,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sc_b, sc_t, ss_b, ss_t,
    HALF: tl.constexpr, BH: tl.constexpr, BD: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_triton.begin(PDL)  # kernels.pdl
    bt = tl.program_id(0).to(tl.int64)
    b, t = bt // T, bt % T
    offs_h = tl.arange(0, BH)
    offs_d = tl.arange(0, BD)
    mask_d = offs_d < HALF
    is_q = offs_h < H
    is_k = (offs_h >= H) & (offs_h < H + HKV)
    h_k = tl.where(is_k, offs_h - H, 0)
    p_q = q + b * sq_b + t * sq_t + offs_h[:, None] * sq_h + offs_d[None, :]
    p_k = k + b * sk_b + t * sk_t + h_k[:, None] * sk_h + offs_d[None, :]
    m_q, m_k = is_q[:, None] & mask_d[None, :], is_k[:, None] & mask_d[None, :]
    x1 = tl.where(m_q, tl.load(p_q, mask=m_q, other=0.0), tl.load(p_k, mask=m_k, other=0.0))
    x2 = tl.where(
        m_q, tl.load(p_q + HALF, mask=m_q, other=0.0), tl.load(p_k + HALF, mask=m_k, other=0.0)
    )
    p_c = cos + b * sc_b + t * sc_t + offs_d
    p_s = sin + b * ss_b + t * ss_t + offs_d
    c1, c2 = tl.load(p_c, mask=mask_d, other=0.0), tl.load(p_c + HALF, mask=mask_d, other=0.0)
    s1, s2 = tl.load(p_s, mask=mask_d, other=0.0), tl.load(p_s + HALF, mask=mask_d, other=0.0)
    dt = out.dtype.element_ty
    # [x1, x2] * cos + [-x2, x1] * sin, each product and the sum rounded as torch rounds them
    # (-x2 * s1 rounds to -(x2 * s1): the sign is taken in float32, where the interpreter can)
    o1 = (_product(x1, c1[None, :], dt).to(tl.float32) - _product(x2, s1[None, :], dt)).to(dt)
    o2 = (_product(x2, c2[None, :], dt).to(tl.float32) + _product(x1, s2[None, :], dt)).to(dt)
    row = (b * (H + HKV) + offs_h) * T + t  # [BH] rows of out [B, H + Hkv, T, 2 * HALF]
    p_o = out + row[:, None] * (2 * HALF) + offs_d[None, :]
    m_o = (is_q | is_k)[:, None] & mask_d[None, :]
    tl.store(p_o, o1, mask=m_o)
    tl.store(p_o + HALF, o2, mask=m_o)


def rotate_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.rotate_qk`` in one launch: q [B, H, T, D], k [B, Hkv, T, D], cos, sin
    [B, T, D], one dtype, unit stride on D. Returns slices of one [B, H + Hkv, T, D] tensor."""
    check_inputs(q, k, cos, sin)
    assert q.dtype == k.dtype == cos.dtype == sin.dtype, "one dtype for q, k, cos and sin"
    assert all(x.stride(-1) == 1 for x in (q, k, cos, sin)), "unit stride on D"
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    out = torch.empty(B, H + Hkv, T, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out[:, :H], out[:, H:]
    rope_kernel[(B * T,)](
        q, k, cos, sin, out, H, Hkv, T,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        HALF=D // 2, BH=triton.next_power_of_2(H + Hkv), BD=triton.next_power_of_2(D // 2),
        num_warps=4, enable_fp_fusion=False, **pdl.launch(q),
    )  # fmt: skip
    return out[:, :H], out[:, H:]


@triton.jit
def rope_vision_kernel(
    qkv, cos, sin, out,
    H,
    s_n, s_3, s_h, sc_n, ss_n,
    HALF: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    # rows 0..2H-1: q's heads then k's, as they sit in out [N, 3, H, D]
    offs_r = tl.arange(0, BR)
    offs_d = tl.arange(0, BD)
    mask = (offs_r < 2 * H)[:, None] & (offs_d < HALF)[None, :]
    row = (offs_r // H) * s_3 + (offs_r % H) * s_h
    p_x = qkv + n * s_n + row[:, None] + offs_d[None, :]
    x1 = tl.load(p_x, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p_x + HALF, mask=mask, other=0.0).to(tl.float32)
    mask_d = offs_d < HALF
    c1 = tl.load(cos + n * sc_n + offs_d, mask=mask_d, other=0.0)[None, :]
    c2 = tl.load(cos + n * sc_n + HALF + offs_d, mask=mask_d, other=0.0)[None, :]
    s1 = tl.load(sin + n * ss_n + offs_d, mask=mask_d, other=0.0)[None, :]
    s2 = tl.load(sin + n * ss_n + HALF + offs_d, mask=mask_d, other=0.0)[None, :]
    # in float32, each product and the sum rounded (no fused multiply-add), then once to out's dtype
    dt = out.dtype.element_ty
    p_o = out + n * (3 * H * 2 * HALF) + offs_r[:, None] * (2 * HALF) + offs_d[None, :]
    tl.store(p_o, (x1 * c1 - x2 * s1).to(dt), mask=mask)
    tl.store(p_o + HALF, (x2 * c2 + x1 * s2).to(dt), mask=mask)
    # v: copied beside them
    offs_h = tl.arange(0, BR // 2)
    offs_v = tl.arange(0, BV)
    mask_v = (offs_h < H)[:, None] & (offs_v < 2 * HALF)[None, :]
    p_v = qkv + n * s_n + 2 * s_3 + offs_h[:, None] * s_h + offs_v[None, :]
    p_ov = out + n * (3 * H * 2 * HALF) + (2 * H + offs_h)[:, None] * (2 * HALF) + offs_v[None, :]
    tl.store(p_ov, tl.load(p_v, mask=mask_v, other=0.0), mask=mask_v)


def rotate_vision_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``reference.rotate_vision_qkv`` in one launch: qkv [N, 3, H, D] with unit stride on D,
    float32 cos, sin [N, D]. Returns a new contiguous [N, 3, H, D] in the dtype of ``qkv``."""
    check_vision_inputs(qkv, cos, sin)
    assert qkv.stride(-1) == 1 and cos.stride(-1) == sin.stride(-1) == 1, "unit stride on D"
    N, _, H, D = qkv.shape
    out = torch.empty(N, 3, H, D, dtype=qkv.dtype, device=qkv.device)
    if out.numel() == 0:
        return out
    rope_vision_kernel[(N,)](
        qkv, cos, sin, out, H,
        qkv.stride(0), qkv.stride(1), qkv.stride(2), cos.stride(0), sin.stride(0),
        HALF=D // 2, BR=triton.next_power_of_2(2 * H), BD=triton.next_power_of_2(D // 2),
        BV=triton.next_power_of_2(D), num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return out
