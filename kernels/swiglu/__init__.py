"""SwiGLU product of the decoder's MLP, ``SiLU(gate) * up``: Triton on CUDA, torch elsewhere.

``silu_mul`` takes the Triton kernel (``swiglu_triton``, imported on first use) for CUDA tensors
without autograd, unless ``INFINITEVL_SWIGLU_KERNEL=0``; everything else takes ``reference``.
"""

import os

import torch

from kernels import has_triton
from kernels.swiglu import reference

__all__ = ["reference", "silu_mul"]


def silu_mul(
    gate: torch.Tensor, up: torch.Tensor, *, use_kernel: bool | None = None
) -> torch.Tensor:
    """``F.silu(gate) * up``; gate, up [..., N] of one shape and dtype.

    Args:
        use_kernel: True forces the Triton kernel, False the reference, None picks by device/grad.
    """
    runnable = gate.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    available = runnable and has_triton()
    if use_kernel and not available:
        raise ValueError(
            f"swiglu: no fast kernel for device {gate.device.type!r}; use_kernel=True needs CUDA"
        )
    if use_kernel is None:
        needs_grad = torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)
        use_kernel = (
            gate.is_cuda
            and available
            and not needs_grad
            and gate.stride(-1) == 1
            and up.stride(-1) == 1
            and os.environ.get("INFINITEVL_SWIGLU_KERNEL") != "0"
        )
    if use_kernel:
        from kernels.swiglu import swiglu_triton

        return swiglu_triton.silu_mul(gate, up)
    return reference.silu_mul(gate, up)
