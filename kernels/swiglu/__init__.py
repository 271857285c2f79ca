"""SwiGLU product of the decoder's MLP, ``SiLU(gate) * up``: Triton on CUDA, torch elsewhere.

``silu_mul`` takes the Triton kernel (``swiglu_triton``, imported on first use) for CUDA tensors
without autograd, unless ``INFINITEVL_SWIGLU_KERNEL=0``; everything else takes ``reference``.
"""

import torch

from kernels import use_fast_path
from kernels.swiglu import reference

__all__ = ["reference", "silu_mul"]


def silu_mul(
    gate: torch.Tensor, up: torch.Tensor, *, use_kernel: bool | None = None
) -> torch.Tensor:
    """``F.silu(gate) * up``; gate, up [..., N] of one shape and dtype.

    Args:
        use_kernel: True forces the Triton kernel, False the reference, None picks by device/grad.
    """
    unit_stride = gate.stride(-1) == 1 and up.stride(-1) == 1
    picked = use_fast_path(
        gate, use_kernel, "swiglu", switch="INFINITEVL_SWIGLU_KERNEL", grad_inputs=(gate, up)
    )
    if picked and (use_kernel or unit_stride):
        from kernels.swiglu import swiglu_triton

        return swiglu_triton.silu_mul(gate, up)
    return reference.silu_mul(gate, up)
