"""The depthwise causal convolution + SiLU over T prompt tokens as one Triton kernel.

The torch form widens every tap of every channel to float32 in memory (a [B, C, T] float32 tensor
per tap, a concatenation, a transpose): at 128K tokens that traffic costs more than the model's
matrix multiplications. Here each program reads its [BT, BC] block of inputs once per tap (the
KS - 1 rows before the block from the same input, or from the tail), multiply-adds in float32
registers from the oldest tap, and writes SiLU of the sum once; blocks past the first KS - 1
tokens skip the tail's masks. ``prefill3`` convolves Gated DeltaNet's q, k and v in one launch and
writes their new tails in place in a second (the frame step had nine launches a layer for them,
and copies). Same contracts as ``reference.prefill`` / ``reference.prefill3`` (forward only);
``TRITON_INTERPRET=1`` runs them on CPU tensors for tests.
"""

import logging

import torch
import triton
import triton.language as tl

from kernels.short_conv.reference import check_prefill_inputs, new_tail

log = logging.getLogger(__name__)


@triton.jit
def _prefill_block(
    x, tail, weight, y, stride_x_b, stride_x_t, T, C, i_t, i_c, i_b,
    KS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Outputs ``[i_t*BT, +BT) x [i_c*BC, +BC)`` of batch row ``i_b``: SiLU(taps . inputs)."""
    offs_t = i_t * BT + tl.arange(0, BT)
    offs_c = i_c * BC + tl.arange(0, BC)
    mask_t, mask_c = offs_t < T, offs_c < C
    mask = mask_t[:, None] & mask_c[None, :]
    p_x = x + i_b * stride_x_b + offs_t.to(tl.int64)[:, None] * stride_x_t + offs_c[None, :]
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    if i_t * BT >= KS - 1:
        # every tap of the block lies in x: tap j of output t reads input t - (KS - 1) + j
        for j in tl.static_range(KS):
            b_x = tl.load(p_x - (KS - 1 - j) * stride_x_t, mask=mask, other=0.0)
            b_w = tl.load(weight + offs_c * KS + j, mask=mask_c, other=0.0).to(tl.float32)
            acc += b_x.to(tl.float32) * b_w[None, :]
    else:
        for j in tl.static_range(KS):
            # before the prompt, the tail holds the input
            src = offs_t - (KS - 1) + j
            in_x = (src >= 0)[:, None] & mask
            in_tail = (src < 0)[:, None] & mask
            p_src = (
                x + i_b * stride_x_b + tl.maximum(src, 0).to(tl.int64)[:, None] * stride_x_t
                + offs_c[None, :]
            )  # fmt: skip
            b_x = tl.load(p_src, mask=in_x, other=0.0)
            p_tail = (
                tail + (i_b * C + offs_c[None, :]) * (KS - 1)
                + (KS - 1 + tl.minimum(src, -1))[:, None]
            )  # fmt: skip
            # the torch form casts the tail to the input's dtype before the taps
            b_tail = tl.load(p_tail, mask=in_tail, other=0.0).to(b_x.dtype)
            b_in = tl.where(in_x, b_x, b_tail).to(tl.float32)
            b_w = tl.load(weight + offs_c * KS + j, mask=mask_c, other=0.0).to(tl.float32)
            acc += b_in * b_w[None, :]
    out = acc * tl.sigmoid(acc)
    p_y = y + (i_b * T + offs_t.to(tl.int64)[:, None]) * C + offs_c[None, :]
    tl.store(p_y, out.to(y.dtype.element_ty), mask=mask)


@triton.jit
def short_conv_prefill_kernel(
    x, tail, weight, y, stride_x_b, stride_x_t, T, C,
    KS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    _prefill_block(x, tail, weight, y, stride_x_b, stride_x_t, T, C, i_t, i_c, i_b, KS, BT, BC)


@triton.jit
def short_conv_prefill3_kernel(
    x0, x1, x2, tail0, tail1, tail2, w0, w1, w2, y0, y1, y2,
    stride_x0_b, stride_x0_t, stride_x1_b, stride_x1_t, stride_x2_b, stride_x2_t, T, C0, C1, C2,
    KS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    # the channel blocks of the three convolutions side by side
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n0, n1 = tl.cdiv(C0, BC), tl.cdiv(C1, BC)
    if i_c < n0:
        _prefill_block(
            x0, tail0, w0, y0, stride_x0_b, stride_x0_t, T, C0, i_t, i_c, i_b, KS, BT, BC
        )
    elif i_c < n0 + n1:
        _prefill_block(
            x1, tail1, w1, y1, stride_x1_b, stride_x1_t, T, C1, i_t, i_c - n0, i_b, KS, BT, BC
        )
    else:
        _prefill_block(
            x2, tail2, w2, y2, stride_x2_b, stride_x2_t, T, C2, i_t, i_c - n0 - n1, i_b, KS, BT, BC
        )


@triton.jit
def _tail_block(
    x, tail, stride_x_b, stride_x_t, T, C, i_c, i_b, KS: tl.constexpr, BKS: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    """The tail of channels ``[i_c*BC, +BC)`` once x follows it: the last KS - 1 inputs, in place."""
    offs_c = i_c * BC + tl.arange(0, BC)
    offs_j = tl.arange(0, BKS)
    mask_c, mask_j = offs_c < C, offs_j < KS - 1
    # new tap j is input T - (KS - 1) + j of [tail, x]
    src = T - (KS - 1) + offs_j
    from_x = mask_c[:, None] & (mask_j & (src >= 0))[None, :]
    from_tail = mask_c[:, None] & (mask_j & (src < 0))[None, :]
    p_x = x + i_b * stride_x_b + tl.maximum(src, 0).to(tl.int64)[None, :] * stride_x_t + offs_c[:, None]
    b_x = tl.load(p_x, mask=from_x, other=0.0)
    row = tail + (i_b * C + offs_c[:, None]) * (KS - 1)
    b_old = tl.load(row + (KS - 1 + tl.minimum(src, -1))[None, :], mask=from_tail, other=0.0)
    b_new = tl.where(from_x, b_x, b_old.to(b_x.dtype))
    # the old taps of a short prompt move within the same rows: every read before any write
    tl.debug_barrier()
    tl.store(row + offs_j[None, :], b_new.to(tail.dtype.element_ty), mask=from_x | from_tail)


@triton.jit
def short_conv_tail3_kernel(
    x0, x1, x2, tail0, tail1, tail2,
    stride_x0_b, stride_x0_t, stride_x1_b, stride_x1_t, stride_x2_b, stride_x2_t, T, C0, C1, C2,
    KS: tl.constexpr, BKS: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    i_c, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n0, n1 = tl.cdiv(C0, BC), tl.cdiv(C1, BC)
    if i_c < n0:
        _tail_block(x0, tail0, stride_x0_b, stride_x0_t, T, C0, i_c, i_b, KS, BKS, BC)
    elif i_c < n0 + n1:
        _tail_block(x1, tail1, stride_x1_b, stride_x1_t, T, C1, i_c - n0, i_b, KS, BKS, BC)
    else:
        _tail_block(x2, tail2, stride_x2_b, stride_x2_t, T, C2, i_c - n0 - n1, i_b, KS, BKS, BC)


# a program's block: 128 channels (16-byte loads) by 16 tokens up to SHORT_PROMPT tokens (a frame's
# 256: enough programs to fill the GPU), else 32; 4 warps. On the H100 (benchmarks/conv_blocks.py,
# the three convolutions of a 4B layer): 9.0 us at 256 tokens and 163 us at 8,192, where the
# former 64 x 128 with 8 warps took 15.7 and 224 us.
BC, WARPS = 128, 4
SHORT_PROMPT = 1024


def block_tokens(T: int) -> int:
    """BT, the tokens of a program's block, for a prompt of T."""
    return 16 if T <= SHORT_PROMPT else 32


def _check_launch(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> int:
    """KS, after ``reference.check_prefill_inputs`` and the layout the kernels read."""
    check_prefill_inputs(x, tail, weight)
    KS = weight.shape[1]
    assert KS >= 2, f"conv_size {KS} leaves no tail"
    assert x.stride(2) == 1 and tail.is_contiguous() and weight.is_contiguous(), (
        "x unit stride on C, tail and weight contiguous"
    )
    return KS


def prefill(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolve ``x`` [B, T, C] (unit stride on C) continuing from ``tail`` [B, C, KS-1].

    Args:
        tail: contiguous, not modified.  weight: [C, KS] contiguous.
    Returns:
        y: [B, T, C] contiguous, in the dtype of x.  tail: [B, C, KS - 1] the last inputs.
    """
    KS = _check_launch(x, tail, weight)
    B, T, C = x.shape
    y = torch.empty(B, T, C, dtype=x.dtype, device=x.device)
    BT = block_tokens(T)
    short_conv_prefill_kernel[(triton.cdiv(T, BT), triton.cdiv(C, BC), B)](
        x, tail, weight, y, x.stride(0), x.stride(1), T, C, KS=KS, BT=BT, BC=BC, num_warps=WARPS
    )
    return y, new_tail(x, tail)


def prefill3(
    xs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tails: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``prefill`` for three convolutions (Gated DeltaNet's q, k, v): two launches in all, the
    tails updated in place (the second launch, once the first has read them).

    Args:
        xs: three [B, T, C_i] (unit stride on C, same dtype).  tails: [B, C_i, KS - 1] contiguous,
            updated in place.  weights: [C_i, KS] contiguous.
    Returns:
        three [B, T, C_i] contiguous, in the dtype of the inputs.
    """
    for x, tail, weight in zip(xs, tails, weights, strict=True):
        _check_launch(x, tail, weight)
    B, T, _ = xs[0].shape
    KS = weights[0].shape[1]
    assert all(x.shape[:2] == (B, T) and w.shape[1] == KS for x, w in zip(xs, weights, strict=True)), (
        "the three inputs share B, T and the taps"
    )
    Cs = [x.shape[2] for x in xs]
    ys = tuple(torch.empty(B, T, c, dtype=xs[0].dtype, device=xs[0].device) for c in Cs)
    strides = [s for x in xs for s in (x.stride(0), x.stride(1))]
    blocks = sum(triton.cdiv(c, BC) for c in Cs)
    BT = block_tokens(T)
    short_conv_prefill3_kernel[(triton.cdiv(T, BT), blocks, B)](
        *xs, *tails, *weights, *ys, *strides, T, *Cs, KS=KS, BT=BT, BC=BC, num_warps=WARPS
    )
    tail_bc = 128
    short_conv_tail3_kernel[(sum(triton.cdiv(c, tail_bc) for c in Cs), B)](
        *xs, *tails, *strides, T, *Cs, KS=KS, BKS=triton.next_power_of_2(KS - 1), BC=tail_bc,
        num_warps=4,
    )  # fmt: skip
    return ys
