"""Depthwise causal convolution + SiLU for one decode token (Gated DeltaNet's q/k/v conv tails).

``step`` picks the fused Triton kernel on CUDA (``step_triton``, imported on first use) and the
torch reference elsewhere (``INFINITEVL_SHORT_CONV_KERNEL=0``: the reference on CUDA too). Prefill
keeps the engine's own convolution over T tokens.
"""

import logging
import os

import torch

from kernels import has_triton
from kernels.short_conv import reference

log = logging.getLogger(__name__)

__all__ = ["reference", "step"]


def step(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, *, use_kernel: bool | None = None) -> torch.Tensor:
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
        raise ValueError(f"short_conv.step: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA")
    if use_kernel is None and os.environ.get("INFINITEVL_SHORT_CONV_KERNEL") == "0":
        use_kernel = False
    if use_kernel or (use_kernel is None and x.is_cuda and available):
        from kernels.short_conv import step_triton

        return step_triton.step(x, tail, weight)
    return reference.step(x, tail, weight)
