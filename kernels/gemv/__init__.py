"""Batch-1 linear layers of the decode step: the Triton GEMV where it measures faster than cuBLAS.

``linear`` takes ``gemv_triton`` (imported on first use) for one activation row of a half-precision
CUDA weight without autograd, and ``F.linear`` (``reference``) everywhere else. Which of the two
runs is decided per weight shape by timing both the first time the shape is seen outside a CUDA
graph capture, so the kernel can only make a decode step faster: a shape first met during a
capture keeps cuBLAS. Both are timed as the decode step runs them: replayed from a CUDA graph,
weights read from memory (``kernels.graph_timing``). With eager launches the Triton launch's host
cost (tens of us, gone inside the graph) was measured instead, and cuBLAS always won.
``INFINITEVL_GEMV_KERNEL=0`` keeps cuBLAS everywhere, ``=1`` takes the
kernel for every eligible call without timing (both for comparisons).
"""

import logging
import os

import torch
import torch.nn.functional as F

from kernels import use_fast_path
from kernels.gemv import reference

log = logging.getLogger(__name__)

__all__ = ["choices", "linear", "reference"]

SWITCH = "INFINITEVL_GEMV_KERNEL"  # "0": cuBLAS everywhere; "1": the kernel without timing

# (N, K, dtype, device, has bias) -> True when the kernel measured faster than cuBLAS
_choice: dict[tuple, bool] = {}


def choices() -> dict[tuple, bool]:
    """A copy of the per-shape decisions made so far (benchmarks print them)."""
    return dict(_choice)


def _fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One half-precision row of ``x`` against a CUDA weight the kernel can read (unit stride on K)."""
    return (
        weight.is_cuda
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and x.numel() == weight.shape[-1]
        and x.stride(-1) == 1
        and weight.dim() == 2
        and weight.stride(1) == 1
    )


def _measured_choice(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    key = (*weight.shape, x.dtype, x.device, bias is not None)
    known = _choice.get(key)
    if known is not None:
        return known
    if torch.cuda.is_current_stream_capturing():
        return False  # no timing inside a capture: cuBLAS, decided again outside
    from kernels.gemv import gemv_triton
    from kernels.graph_timing import copies_beyond_l2, graph_us

    ws = copies_beyond_l2(weight)
    t_kernel = graph_us(lambda i: gemv_triton.linear(x, ws[i % len(ws)], bias))
    t_cublas = graph_us(lambda i: F.linear(x, ws[i % len(ws)], bias))
    _choice[key] = t_kernel < t_cublas
    log.info("gemv %s: kernel %.1f us, cuBLAS %.1f us (graphed)", key[:2], t_kernel, t_cublas)
    return _choice[key]


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; one row of ``x`` on CUDA may take the Triton GEMV.

    Args:
        x: [..., K].  weight: [N, K].  bias: [N] or None.
        use_kernel: True forces the kernel (CUDA or ``TRITON_INTERPRET=1``), False cuBLAS / torch,
            None decides per shape by timing (see the module docstring).
    Returns:
        [..., N] in the dtype of ``x``.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    picked = use_fast_path(x, use_kernel, "gemv", switch=SWITCH, grad_inputs=tensors)
    if picked and use_kernel is None:
        forced = os.environ.get(SWITCH) == "1"
        picked = _fits(x, weight) and (forced or _measured_choice(x, weight, bias))
    if picked:
        from kernels.gemv import gemv_triton

        return gemv_triton.linear(x, weight, bias)
    return F.linear(x, weight, bias)
