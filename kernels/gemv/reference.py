"""Batch-1 linear layer (matrix-vector product): the reference the GEMV kernel is held to."""

import torch
import torch.nn.functional as F


def check_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: str = "gemv"
) -> None:
    """Raise ValueError naming ``op`` and the shapes when ``x`` [..., K], ``weight`` [N, K],
    ``bias`` [N] don't fit (``kernels.splitk`` shares it)."""
    if (
        weight.dim() != 2
        or x.shape[-1] != weight.shape[1]
        or (bias is not None and bias.shape != weight.shape[:1])
    ):
        got = None if bias is None else tuple(bias.shape)
        raise ValueError(
            f"{op}: x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {got} do not fit"
        )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` [..., K] holding one row; [..., N] in the dtype of ``x``."""
    check_inputs(x, weight, bias)
    return F.linear(x, weight, bias)
