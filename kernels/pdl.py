"""Programmatic dependent launch (PDL) of the decode step's Triton kernels: on by default.

On Hopper and later GPUs a kernel launched with PDL may start while the kernel before it in the
stream is still running: its programs are placed as soon as every program of that kernel has
signalled (``gdc_launch_dependents``), and each waits (``gdc_wait``) for it to finish before
reading anything it wrote. What a kernel does before its wait overlaps the kernel before:
placement and launch, and in ``gemv_kernel`` the first tile of weights (they never depend on the
kernel before). Inside the decode step's CUDA graph a token is ~390 launches, 0.12 ms of gaps
between them, and the GEMVs reach the copy bandwidth only after a ramp each.

Each kernel that takes part has a ``PDL`` constexpr: when True it waits before its first read of
another kernel's output and before its first write, and signals its dependents after its wait.
``launch`` gives the two keyword arguments its launcher passes (``PDL=``, ``launch_pdl=``): on for
CUDA tensors of a device of compute capability 9 or more, outside Triton's interpreter (which runs
neither instruction), unless ``INFINITEVL_PDL=0``. On the H100 the graphed decode step went from
3.409 to 3.157 ms a token with it, in one call (benchmarks/RESULTS_decode_profile.md), and the
graph gives the same bits with it as without (tests/engine/test_cuda_graph.py).
"""

import functools
import os

import torch

__all__ = ["SWITCH", "launch"]

SWITCH = "INFINITEVL_PDL"  # "0": launch the decode kernels without PDL


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def launch(x: torch.Tensor) -> dict[str, bool]:
    """``{"PDL": on, "launch_pdl": on}`` for a kernel whose tensors are on ``x``'s device."""
    on = (
        x.is_cuda
        and os.environ.get(SWITCH) != "0"
        and os.environ.get("TRITON_INTERPRET") != "1"
        and _capable(x.device.index if x.device.index is not None else torch.cuda.current_device())
    )
    return {"PDL": on, "launch_pdl": on}
