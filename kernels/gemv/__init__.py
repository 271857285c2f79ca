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
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import swiglu, use_fast_path
from kernels.gemv import reference

log = logging.getLogger(__name__)

__all__ = ["choices", "glu_choices", "linear", "reference", "silu_mul_linear"]

SWITCH = "INFINITEVL_GEMV_KERNEL"  # "0": cuBLAS everywhere; "1": the kernel without timing
# "1": the MLP's SwiGLU product made inside the down projection's GEMV where that times faster
# than the two kernels (opt-in: on the H100 it timed slower, benchmarks/RESULTS.md run 5)
GLU_SWITCH = "INFINITEVL_GEMV_GLU"

# (N, K, dtype, device, has bias) -> True when the kernel measured faster than cuBLAS
_choice: dict[tuple, bool] = {}
# the same for silu_mul_linear: True when the fused kernel beat kernels.swiglu + linear
_glu_choice: dict[tuple, bool] = {}


def choices() -> dict[tuple, bool]:
    """A copy of the per-shape decisions made so far (benchmarks print them)."""
    return dict(_choice)


def glu_choices() -> dict[tuple, bool]:
    """A copy of ``silu_mul_linear``'s per-shape decisions so far."""
    return dict(_glu_choice)


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


def _timed_choice(
    table: dict[tuple, bool],
    key: tuple,
    weight: torch.Tensor,
    kernel: Callable[[torch.Tensor], object],
    other: Callable[[torch.Tensor], object],
    what: str = "gemv",
    prepare: Callable[[], object] | None = None,
) -> bool:
    """Whether ``kernel(w)`` runs faster than ``other(w)``, both replayed from a CUDA graph over
    copies of ``weight`` read from memory (``prepare()`` first), recorded as ``table[key]``.
    Inside a capture nothing runs: False, decided again outside."""
    if torch.cuda.is_current_stream_capturing():
        return False
    if prepare is not None:
        prepare()
    from kernels.graph_timing import copies_beyond_l2, graph_us

    ws = copies_beyond_l2(weight)
    t_kernel = graph_us(lambda i: kernel(ws[i % len(ws)]))
    t_other = graph_us(lambda i: other(ws[i % len(ws)]))
    table[key] = t_kernel < t_other
    log.info("%s %s: kernel %.1f us, other %.1f us (graphed)", what, key[:2], t_kernel, t_other)
    return table[key]


def _measured_choice(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    key = (*weight.shape, x.dtype, x.device, bias is not None)
    known = _choice.get(key)  # the decode step's eager calls stop here
    if known is not None:
        return known
    from kernels.gemv import gemv_triton

    return _timed_choice(
        _choice,
        key,
        weight,
        lambda w: gemv_triton.linear(x, w, bias),
        lambda w: F.linear(x, w, bias),
    )


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


def _measured_glu_choice(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> bool:
    key = (*weight.shape, gate_up.dtype, gate_up.device, bias is not None)
    known = _glu_choice.get(key)
    if known is not None:
        return known
    from kernels.gemv import gemv_triton

    gate, up = gate_up.split(weight.shape[-1], dim=-1)
    return _timed_choice(
        _glu_choice,
        key,
        weight,
        lambda w: gemv_triton.silu_mul_linear(gate_up, w, bias),
        lambda w: linear(swiglu.silu_mul(gate, up), w, bias),
        "gemv with the SwiGLU product",
        prepare=lambda: linear(swiglu.silu_mul(gate, up), weight, bias),  # linear's own choice
    )


def silu_mul_linear(
    gate_up: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """``linear(SiLU(gate) * up, weight, bias)`` for ``gate_up`` [..., 2K] = [gate | up] (the
    MLP's fused gate/up product) and ``weight`` [N, K] (its down projection).

    Args:
        use_kernel: True forces the fused Triton kernel; False ``kernels.swiglu`` then
            ``linear``; None takes the fused kernel for one row on CUDA when
            ``INFINITEVL_GEMV_GLU=1`` and it times faster than the two (graphed, per shape),
            else the two.
    Returns:
        [..., N] in the dtype of ``gate_up``.
    """
    K = weight.shape[-1]
    if gate_up.shape[-1] != 2 * K:
        raise ValueError(
            f"gemv: gate_up {tuple(gate_up.shape)} is not [gate | up] for weight "
            f"{tuple(weight.shape)} (last dimension 2 x {K})"
        )
    gate, up = gate_up.split(K, dim=-1)
    if use_kernel is None and os.environ.get(GLU_SWITCH) != "1":
        use_kernel = False  # opt-in (above)
    tensors = (gate_up, weight) if bias is None else (gate_up, weight, bias)
    picked = use_fast_path(gate_up, use_kernel, "gemv", switch=SWITCH, grad_inputs=tensors)
    if picked and use_kernel is None:
        fits = _fits(gate, weight) and gate_up.is_contiguous()
        picked = fits and _measured_glu_choice(gate_up, weight, bias)
    if picked:
        from kernels.gemv import gemv_triton

        return gemv_triton.silu_mul_linear(gate_up, weight, bias)
    return linear(swiglu.silu_mul(gate, up), weight, bias)
