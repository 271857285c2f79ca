"""Torch reference of the split-K linear layer: ``F.linear`` itself, and the sum of K-slice
partial products that the fast path computes, written in torch."""

import torch
import torch.nn.functional as F

from kernels.gemv import reference as gemv_reference


def check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Raise ValueError naming the shapes when ``x`` [..., K], ``weight`` [N, K], ``bias`` [N]
    don't fit."""
    gemv_reference.check_inputs(x, weight, bias, op="splitk")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: [..., K] -> [..., N] in the dtype of ``x``."""
    check_inputs(x, weight, bias)
    return F.linear(x, weight, bias)


def reduce(partials: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The sum over the first axis of float32 ``partials`` [S, M, N], plus ``bias`` [N], rounded
    once to ``dtype``: [M, N]."""
    total = partials.float().sum(0)
    if bias is not None:
        total = total + bias.float()
    return total.to(dtype)
