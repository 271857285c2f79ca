"""Torch reference of the depthwise causal convolution + SiLU of Gated DeltaNet (q, k, v).

Gated DeltaNet convolves q, k and v over time with ``conv_size`` taps per channel; a session keeps
the last ``conv_size - 1`` inputs per channel (the tail) in its state. ``prefill`` convolves T
tokens continuing from the tail, ``step`` one decode token. Math in float32, as fla's kernel does.
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


def check_prefill_inputs(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes unless x [B, T, C], tail [B, C, KS-1], weight [C, KS] fit."""
    ok = x.dim() == 3 and tail.dim() == 3 and weight.dim() == 2
    if (
        not ok
        or tail.shape[:2] != (x.shape[0], x.shape[2])
        or weight.shape != (x.shape[2], tail.shape[2] + 1)
    ):
        raise ValueError(
            f"short_conv: x {tuple(x.shape)}, tail {tuple(tail.shape)}, weight {tuple(weight.shape)} do not fit "
            "[B, T, C], [B, C, KS-1], [C, KS]"
        )


def new_tail(x: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """The last KS - 1 inputs once ``x`` [B, T, C] follows ``tail`` [B, C, KS-1], in x's dtype
    (what ``prefill`` returns as its tail)."""
    keep = tail.shape[2]
    recent = x[:, max(0, x.shape[1] - keep) :].transpose(1, 2)  # [B, C, <= keep]
    return torch.cat([tail.to(x.dtype), recent], dim=2)[:, :, recent.shape[2] :].detach()


def prefill(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convolve ``x`` [B, T, C] continuing from ``tail`` [B, C, KS-1]; differentiable in x and weight.

    Returns:
        y: [B, T, C] = SiLU(causal depthwise conv) in the dtype of x, the taps multiply-added in
            float32 from the oldest.
        tail: [B, C, KS - 1] the last inputs (a new tensor; ``tail`` is not modified).
    """
    check_prefill_inputs(x, tail, weight)
    T, KS = x.shape[1], weight.shape[1]
    xt = torch.cat([tail.to(x.dtype), x.transpose(1, 2)], dim=2)  # [B, C, KS - 1 + T]
    # KS shifted multiply-adds; on CPU this beats a grouped conv1d, most of all for one token
    w = weight.float()
    y = xt[:, :, 0:T].float() * w[:, 0:1]
    for j in range(1, KS):
        y = y + xt[:, :, j : j + T].float() * w[:, j : j + 1]
    return F.silu(y).to(x.dtype).transpose(1, 2), new_tail(x, tail)


def prefill3(
    xs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tails: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """``prefill`` of Gated DeltaNet's q, k and v, each tail replaced in place by its new one.

    Args:
        xs: three [B, T, C_i].  tails: [B, C_i, KS - 1], updated in place (detached values).
        weights: [C_i, KS].
    Returns:
        the three outputs [B, T, C_i], differentiable in x and weight as ``prefill`` is.
    """
    ys = []
    for x, tail, weight in zip(xs, tails, weights, strict=True):
        y, new = prefill(x, tail, weight)
        with torch.no_grad():
            tail.copy_(new)
        ys.append(y)
    return tuple(ys)
