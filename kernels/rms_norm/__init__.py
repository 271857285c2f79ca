"""RMS norms of the decoder: dispatchers that pick the Triton kernel or the torch reference.

``rms_norm`` (Qwen2's, residual stream), ``add_rms_norm`` (the residual add, then Qwen2's) and
``gated_rms_norm`` (Gated DeltaNet's output norm).
On CUDA without autograd they take ``norm_triton`` (one launch a call, imported on first use);
calls that need grad, and every other device, take ``reference``. Shapes and semantics are those
of ``kernels.rms_norm.reference``. ``INFINITEVL_NORM_KERNEL=0`` keeps the reference on CUDA too.
"""

import logging

import torch

from kernels import use_fast_path
from kernels.rms_norm import reference

log = logging.getLogger(__name__)

__all__ = ["add_rms_norm", "gated_rms_norm", "reference", "rms_norm"]


def _use_kernel(use_kernel: bool | None, *tensors: torch.Tensor) -> bool:
    return use_fast_path(
        tensors[0], use_kernel, "rms_norm", switch="INFINITEVL_NORM_KERNEL", grad_inputs=tensors
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, use_kernel: bool | None = None
) -> torch.Tensor:
    """Qwen2's RMSNorm over the last dim of ``x`` [..., N]; ``weight`` [N].

    Args:
        use_kernel: True forces the Triton kernel, False the reference, None picks by device/grad.
    Returns:
        [..., N] in the dtype of ``weight * x``.
    """
    if _use_kernel(use_kernel, x, weight):
        from kernels.rms_norm import norm_triton

        return norm_triton.rms_norm(x, weight, eps)
    return reference.rms_norm(x, weight, eps)


def gated_rms_norm(
    o: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """Gated DeltaNet's ``RMSNorm(o) * weight * SiLU(gate)`` over the last dim; o, gate [..., N].

    Returns:
        [..., N] in the dtype of ``o``.
    """
    if _use_kernel(use_kernel, o, gate, weight):
        from kernels.rms_norm import norm_triton

        return norm_triton.gated_rms_norm(o, gate, weight, eps)
    return reference.gated_rms_norm(o, gate, weight, eps)


def add_rms_norm(
    x: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and Qwen2's RMSNorm after it: ``s = x + h``, ``(s, rms_norm(s))``.

    Args:
        x, h: [..., N] of one shape and dtype (the residual stream and a block's output).
        use_kernel: True forces the Triton kernel, False the reference, None picks by device/grad.
    Returns:
        (s, normed) as ``reference.add_rms_norm``.
    """
    if x.dtype == h.dtype and x.shape == h.shape and _use_kernel(use_kernel, x, h, weight):
        from kernels.rms_norm import norm_triton

        return norm_triton.add_rms_norm(x, h, weight, eps)
    return reference.add_rms_norm(x, h, weight, eps)
