"""Depthwise causal convolution + SiLU of Gated DeltaNet's q/k/v: prompts and decode tokens.

``prefill`` (T tokens) and ``step`` (one token) pick their Triton kernel on CUDA
(``prefill_triton``, ``step_triton``, imported on first use) and the
torch reference elsewhere (``INFINITEVL_SHORT_CONV_KERNEL=0``: the reference on CUDA too).
"""

import logging

import torch

from kernels import use_fast_path
from kernels.short_conv import reference

log = logging.getLogger(__name__)

__all__ = ["prefill", "prefill3", "reference", "step", "step3"]

SWITCH = "INFINITEVL_SHORT_CONV_KERNEL"  # "0" keeps the reference on CUDA


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
    if use_fast_path(x, use_kernel, "short_conv.prefill", switch=SWITCH, grad_inputs=(x, weight)):
        from kernels.short_conv import prefill_triton

        return prefill_triton.prefill(x, tail.contiguous(), weight.contiguous())
    return reference.prefill(x, tail, weight)


def prefill3(
    xs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tails: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, ...]:
    """``prefill`` for Gated DeltaNet's three convolutions (q, k, v), the tails replaced in place.

    On CUDA without grad: two Triton launches for the three (``prefill_triton.prefill3``), where
    the separate calls took three launches and six torch ops for the tails.

    Args:
        xs: three [B, T, C_i].  tails: [B, C_i, KS - 1], updated in place.  weights: [C_i, KS].
        use_kernel: as for ``prefill``.
    Returns:
        the three outputs [B, T, C_i] in the dtype of the inputs.
    """
    grads = (*xs, *weights)
    if use_fast_path(xs[0], use_kernel, "short_conv.prefill3", switch=SWITCH, grad_inputs=grads):
        from kernels.short_conv import prefill_triton

        return prefill_triton.prefill3(xs, tails, tuple(w.contiguous() for w in weights))
    return reference.prefill3(xs, tails, weights)


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
    if use_fast_path(x, use_kernel, "short_conv.step", switch=SWITCH):
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
    if use_fast_path(xs[0], use_kernel, "short_conv.step3", switch=SWITCH):
        from kernels.short_conv import step_triton

        return step_triton.step3(xs, tails, weights)
    return tuple(reference.step(x, t, w) for x, t, w in zip(xs, tails, weights, strict=True))
