"""One decode step of the depthwise causal convolution + SiLU as one Triton kernel.

Replaces the concatenate / multiply-add / SiLU / shift / copy sequence (about ten launches per
convolution, three convolutions per Gated DeltaNet layer) with one launch that reads the tail,
the input and the filter once and writes the output and the shifted tail. Same contract as
``reference.step``; ``TRITON_INTERPRET=1`` runs it on CPU tensors for tests.
"""

import logging

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton
from kernels.short_conv.reference import check_inputs

log = logging.getLogger(__name__)


@triton.jit
def _step_block(
    x, tail, weight, y, stride_x_b, stride_y_b, C, i_b, offs_c, KS: tl.constexpr, BKS: tl.constexpr
):
    """One token for channels ``offs_c`` of row ``i_b``: y = SiLU(taps . [tail, x]); tail shifted."""
    offs_j = tl.arange(0, BKS)
    mask_c = offs_c < C
    b_x = tl.load(x + i_b * stride_x_b + offs_c, mask=mask_c, other=0.0).to(tl.float32)  # [BC]
    # taps 0 .. KS-2 come from the tail, tap KS-1 from x
    p_tail = tail + (i_b * C + offs_c[:, None]) * (KS - 1) + offs_j[None, :]
    mask_tail = mask_c[:, None] & (offs_j[None, :] < KS - 1)
    b_tail = tl.load(p_tail, mask=mask_tail, other=0.0).to(tl.float32)  # [BC, BKS]
    is_x = (offs_j == KS - 1)[None, :]
    b_win = tl.where(is_x, b_x[:, None], b_tail)
    b_w = tl.load(
        weight + offs_c[:, None] * KS + offs_j[None, :],
        mask=mask_c[:, None] & (offs_j[None, :] < KS),
        other=0.0,
    )
    b_y = tl.sum(b_win * b_w.to(tl.float32), axis=1)
    b_y = b_y * tl.sigmoid(b_y)
    tl.store(y + i_b * stride_y_b + offs_c, b_y.to(y.dtype.element_ty), mask=mask_c)
    # shift in registers (new tail tap j = window tap j + 1): reading the old tail back from memory
    # while other threads overwrite it would race
    shift = (offs_j[:, None] + 1) == offs_j[None, :]  # [BKS, BKS]: tap j takes window tap j + 1
    b_next = tl.sum(tl.where(shift[None, :, :], b_win[:, None, :], 0.0), axis=2)  # [BC, BKS]
    tl.store(p_tail, b_next.to(tail.dtype.element_ty), mask=mask_tail)


@triton.jit
def short_conv_step_kernel(
    x, tail, weight, y, stride_x_b, C, KS: tl.constexpr, BKS: tl.constexpr, BC: tl.constexpr
):
    i_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    _step_block(x, tail, weight, y, stride_x_b, C, C, i_b, offs_c, KS, BKS)


@triton.jit
def short_conv_step3_kernel(
    x0, x1, x2, tail0, tail1, tail2, w0, w1, w2, y, stride_x0, stride_x1, stride_x2, C0, C1, C2,
    KS: tl.constexpr, BKS: tl.constexpr, BC: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_triton.begin(PDL)  # kernels.pdl
    # the channel blocks of the three convolutions side by side; y holds [y0 | y1 | y2] per row
    i_b = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    n0, n1 = tl.cdiv(C0, BC), tl.cdiv(C1, BC)
    stride_y = C0 + C1 + C2
    if i_c < n0:
        offs = i_c * BC + tl.arange(0, BC)
        _step_block(x0, tail0, w0, y, stride_x0, stride_y, C0, i_b, offs, KS, BKS)
    elif i_c < n0 + n1:
        offs = (i_c - n0) * BC + tl.arange(0, BC)
        _step_block(x1, tail1, w1, y + C0, stride_x1, stride_y, C1, i_b, offs, KS, BKS)
    else:
        offs = (i_c - n0 - n1) * BC + tl.arange(0, BC)
        _step_block(x2, tail2, w2, y + C0 + C1, stride_x2, stride_y, C2, i_b, offs, KS, BKS)


def step(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One token through the causal depthwise convolution and SiLU, shifting ``tail`` in place.

    Args:
        x: [B, C] (unit stride on C).  tail: [B, C, KS - 1] contiguous, updated in place.
        weight: [C, KS] contiguous.
    Returns:
        y: [B, C] in the dtype of x.
    """
    check_inputs(x, tail, weight)
    B, C = x.shape
    KS = weight.shape[1]
    assert KS >= 2, f"conv_size {KS} leaves no tail"
    assert tail.is_contiguous() and weight.is_contiguous() and x.stride(-1) == 1, (
        "tail/weight contiguous, x unit stride"
    )
    y = torch.empty(B, C, dtype=x.dtype, device=x.device)
    BC = 256
    short_conv_step_kernel[(B, triton.cdiv(C, BC))](
        x,
        tail,
        weight,
        y,
        x.stride(0),
        C,
        KS=KS,
        BKS=triton.next_power_of_2(KS),
        BC=BC,
        num_warps=4,
    )
    return y


def step3(
    xs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tails: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``step`` for three convolutions (Gated DeltaNet's q, k, v) in one launch.

    Args:
        xs: three [B, C_i] (unit stride on C, same dtype).  tails: [B, C_i, KS - 1] contiguous,
            updated in place.  weights: [C_i, KS] contiguous.
    Returns:
        three [B, C_i] in the dtype of the inputs (views of one [B, C_0 + C_1 + C_2] tensor).
    """
    for x, tail, weight in zip(xs, tails, weights, strict=True):
        check_inputs(x, tail, weight)
        assert tail.is_contiguous() and weight.is_contiguous() and x.stride(-1) == 1, (
            "tail/weight contiguous, x unit stride"
        )
    KS = weights[0].shape[1]
    assert KS >= 2 and all(w.shape[1] == KS for w in weights), "one conv_size >= 2 for all three"
    B = xs[0].shape[0]
    sizes = [x.shape[1] for x in xs]
    y = torch.empty(B, sum(sizes), dtype=xs[0].dtype, device=xs[0].device)
    BC = 256
    grid = (B, sum(triton.cdiv(c, BC) for c in sizes))
    short_conv_step3_kernel[grid](
        *xs, *tails, *weights, y, *(x.stride(0) for x in xs), *sizes,
        KS=KS, BKS=triton.next_power_of_2(KS), BC=BC, num_warps=4, **pdl.launch(y),
    )  # fmt: skip
    return tuple(y.split(sizes, dim=1))  # type: ignore[return-value]
