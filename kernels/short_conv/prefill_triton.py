"""The depthwise causal convolution + SiLU over T prompt tokens as one Triton kernel.

The torch form widens every tap of every channel to float32 in memory (a [B, C, T] float32 tensor
per tap, a concatenation, a transpose): at 128K tokens that traffic costs more than the model's
matrix multiplications. Here each program reads its [BT, BC] block of inputs once per tap (the
KS - 1 rows before the block from the same input, or from the tail), multiply-adds in float32
registers from the oldest tap, and writes SiLU of the sum once. Same contract as
``reference.prefill`` (forward only); ``TRITON_INTERPRET=1`` runs it on CPU tensors for tests.
"""

import logging

import torch
import triton
import triton.language as tl

from kernels.short_conv.reference import check_prefill_inputs, new_tail

log = logging.getLogger(__name__)


@triton.jit
def short_conv_prefill_kernel(
    x,
    tail,
    weight,
    y,
    stride_x_b,
    stride_x_t,
    T,
    C,
    KS: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_t = i_t * BT + tl.arange(0, BT)
    offs_c = i_c * BC + tl.arange(0, BC)
    mask_t, mask_c = offs_t < T, offs_c < C
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(KS):
        # tap j of output t reads input t - (KS - 1) + j; before the prompt, the tail holds it
        src = offs_t - (KS - 1) + j
        in_x = (src >= 0)[:, None] & mask_t[:, None] & mask_c[None, :]
        in_tail = (src < 0)[:, None] & mask_t[:, None] & mask_c[None, :]
        p_x = (
            x
            + i_b * stride_x_b
            + tl.maximum(src, 0).to(tl.int64)[:, None] * stride_x_t
            + offs_c[None, :]
        )
        b_x = tl.load(p_x, mask=in_x, other=0.0)
        p_tail = (
            tail + (i_b * C + offs_c[None, :]) * (KS - 1) + (KS - 1 + tl.minimum(src, -1))[:, None]
        )
        # the torch form casts the tail to the input's dtype before the taps
        b_tail = tl.load(p_tail, mask=in_tail, other=0.0).to(b_x.dtype)
        b_in = tl.where(in_x, b_x, b_tail).to(tl.float32)
        b_w = tl.load(weight + offs_c * KS + j, mask=mask_c, other=0.0).to(tl.float32)
        acc += b_in * b_w[None, :]
    out = acc * tl.sigmoid(acc)
    p_y = y + (i_b * T + offs_t[:, None]) * C + offs_c[None, :]
    tl.store(p_y, out.to(y.dtype.element_ty), mask=mask_t[:, None] & mask_c[None, :])


def prefill(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolve ``x`` [B, T, C] (unit stride on C) continuing from ``tail`` [B, C, KS-1].

    Args:
        tail: contiguous, not modified.  weight: [C, KS] contiguous.
    Returns:
        y: [B, T, C] contiguous, in the dtype of x.  tail: [B, C, KS - 1] the last inputs.
    """
    check_prefill_inputs(x, tail, weight)
    B, T, C = x.shape
    KS = weight.shape[1]
    assert KS >= 2, f"conv_size {KS} leaves no tail"
    assert x.stride(2) == 1 and tail.is_contiguous() and weight.is_contiguous(), (
        "x unit stride on C, tail and weight contiguous"
    )
    y = torch.empty(B, T, C, dtype=x.dtype, device=x.device)
    BT, BC = 32, 128
    short_conv_prefill_kernel[(triton.cdiv(T, BT), triton.cdiv(C, BC), B)](
        x, tail, weight, y, x.stride(0), x.stride(1), T, C, KS=KS, BT=BT, BC=BC, num_warps=4
    )
    return y, new_tail(x, tail)
