"""Depthwise causal convolution + SiLU of Gated DeltaNet's q/k/v: prompts and decode tokens.

``prefill`` (T tokens) and ``step`` (one token) pick their Triton kernel on CUDA
(``prefill_triton``, ``step_triton``, imported on first use) and the
torch reference elsewhere (``INFINITEVL_SHORT_CONV_KERNEL=0``: the reference on CUDA too).
"""

import logging
import os

import torch

from kernels import has_triton
from kernels.short_conv import reference

log = logging.getLogger(__name__)

__all__ = ["prefill", "reference", "step", "step3"]


def prefill(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, *, use_kernel: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """T tokens through the causal depthwise convolution and SiLU, continuing from ``tail``.

    Args:
        x: [B, T, C].  tail: [B, C, KS - 1], not modified.  weight: [C, KS].
        use_kernel: True forces the Triton kernel, False the reference, None picks: the kernel on
            CUDA when no grad is needed (it has no backward) unless ``INFINITEVL_SHORT_CONV_KERNEL=0``.
    Returns:
        y: [B, T, C] in the dtype of x.  tail: [B, C, KS - 1] the last inputs, to carry on.
    """
    runnable = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    available = runnable and has_triton()
    if use_kernel and not available:
        raise ValueError(
            f"short_conv.prefill: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA"
        )
    if use_kernel is None:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        use_kernel = (
            x.is_cuda
            and available
            and not needs_grad
            and os.environ.get("INFINITEVL_SHORT_CONV_KERNEL") != "0"
        )
    if use_kernel:
        from kernels.short_conv import prefill_triton

        return prefill_triton.prefill(x, tail.contiguous(), weight.contiguous())
    return reference.prefill(x, tail, weight)


def step(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, *, use_kernel: bool | None = None
) -> torch.Tensor:
    """One token through the causal depthwise convolution and SiLU, shifting ``tail`` in place.

    Args:
        x: [B, C].  tail: [B, C, KS - 1], oldest input first, updated in place.
        weight: [C, KS] (a [C, 1, KS] conv weight works after ``[:, 0]``).
        use_kernel: True forces the Triton kernel, False the reference, None picks by device.
    Returns:
        y: [B, C] in the dtype of x.
    """
    runnable = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    available = runnable and has_triton()
    if use_kernel and not available:
        raise ValueError(
            f"short_conv.step: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA"
        )
    if use_kernel is None and os.environ.get("INFINITEVL_SHORT_CONV_KERNEL") == "0":
        use_kernel = False
    if use_kernel or (use_kernel is None and x.is_cuda and available):
        from kernels.short_conv import step_triton

        return step_triton.step(x, tail, weight)
    return reference.step(x, tail, weight)


def step3(
    xs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tails: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, ...]:
    """``step`` for three convolutions at once (q, k, v): one Triton launch on CUDA.

    Args:
        xs, tails, weights: three of each, as for ``step``; tails updated in place.
    Returns:
        the three outputs [B, C_i] in the dtype of the inputs.
    """
    x = xs[0]
    runnable = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    available = runnable and has_triton()
    if use_kernel and not available:
        raise ValueError(
            f"short_conv.step3: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA"
        )
    if use_kernel is None:
        use_kernel = (
            x.is_cuda and available and os.environ.get("INFINITEVL_SHORT_CONV_KERNEL") != "0"
        )
    if use_kernel:
        from kernels.short_conv import step_triton

        return step_triton.step3(xs, tails, weights)
    return tuple(reference.step(x, t, w) for x, t, w in zip(xs, tails, weights, strict=True))
