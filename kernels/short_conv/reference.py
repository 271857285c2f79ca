"""Torch reference of one decode step of the depthwise causal convolution + SiLU (the conv tails).

Gated DeltaNet convolves q, k and v over time with ``conv_size`` taps per channel; decode keeps
the last ``conv_size - 1`` inputs per channel (the tail) in the session state. Math in float32,
as fla's kernel and ``engine.model.gated_deltanet.ShortConvolution`` do.
"""

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def check_inputs(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes unless x [B, C], tail [B, C, KS-1], weight [C, KS] fit."""
    if x.dim() != 2 or tail.dim() != 3 or weight.dim() != 2:
        raise ValueError(
            f"short_conv: x {tuple(x.shape)}, tail {tuple(tail.shape)}, weight {tuple(weight.shape)}: "
            "expected [B, C], [B, C, KS-1], [C, KS]"
        )
    B, C = x.shape
    if tail.shape[:2] != (B, C) or weight.shape != (C, tail.shape[2] + 1):
        raise ValueError(
            f"short_conv: x {tuple(x.shape)}, tail {tuple(tail.shape)}, weight {tuple(weight.shape)} do not fit "
            "[B, C], [B, C, KS-1], [C, KS]"
        )


@torch.no_grad()
def step(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One token through the causal depthwise convolution and SiLU, shifting ``tail`` in place.

    Args:
        x: [B, C] this token's projected inputs.
        tail: [B, C, KS - 1] the previous KS - 1 inputs, oldest first; updated in place.
        weight: [C, KS] one filter per channel (the last tap multiplies ``x``).
    Returns:
        y: [B, C] = SiLU(sum_j [tail, x][..., j] * weight[:, j]) in the dtype of x.
    """
    check_inputs(x, tail, weight)
    window = torch.cat([tail.float(), x.float()[:, :, None]], dim=2)  # [B, C, KS]
    y = (window * weight.float()).sum(-1)
    tail.copy_(window[:, :, 1:])
    return F.silu(y).to(x.dtype)
