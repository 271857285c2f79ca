"""Linear layers of a few hundred rows split along K where that measures faster than cuBLAS.

A 448x448 frame is 256 decoder rows. The products with a 2,048-wide output (the MLP's down
projection, K = 11,008; Gated DeltaNet's and attention's output projections; the merger's second
layer) are then 2 x 16 of cuBLAS's 128x128 output tiles: 32 programs on a GPU of 132
multiprocessors, each reading all of K. The H100 took 34.0 us for the down projection against
17.3 us for its bytes at the copy bandwidth (benchmarks/RESULTS.md, run 12). Split-K cuts K into
S slices, computes every slice's product in one batched cuBLAS call with float32 output
(``partials``), and sums the slices with the bias in one Triton kernel (``reduce_triton``).
The vision tower's 1,024 rows of a frame against its 1,280-wide outputs (attention output, MLP
down projection) are 80 tiles: timed the same way.

A split paid only inside a CUDA graph: on the H100 the graphed frame took 10.36 ms with the
timed splits against 10.50 ms without, and the eager frame forward, which launches each kernel
from Python, 78.6 ms against 68.6 ms (one process, benchmarks/RESULTS.md run 13, when eager calls
split too). So ``linear`` splits only while a graph is captured, and is ``F.linear`` in every
eager call but one kind: the warm-up before a capture (``preparing_capture()``, which
``engine.cuda_graph`` enters), where each shape not yet seen is timed, ``F.linear`` against each
split that divides K (2, 4, 8), each candidate replayed from a CUDA graph over weights read from
memory (``kernels.graph_timing``), as the captured step runs it, and the fastest is recorded and
run. The rows are bucketed to the next power of two; a shape first met in a capture without a
warm-up keeps cuBLAS. Only calls where split-K can help are considered: CUDA, half precision,
no autograd, 2 to ``MAX_ROWS`` rows, fewer 128x128 output tiles than the GPU has
multiprocessors. ``INFINITEVL_SPLITK=0`` keeps cuBLAS everywhere; ``=S`` takes S slices wherever
they fit, eager calls included, without timing (comparisons).
"""

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from kernels import has_triton
from kernels.splitk import reference
from kernels.splitk.partials import partials, slice_width

log = logging.getLogger(__name__)

__all__ = [
    "MAX_ROWS", "SPLITS", "choice_key", "choices", "linear", "preparing_capture", "reference",
    "split_linear",
]  # fmt: skip

SWITCH = "INFINITEVL_SPLITK"  # "0": cuBLAS everywhere; "S": S slices wherever they fit
MAX_ROWS = 1024  # more rows fill the GPU with output tiles: never split
SPLITS = (2, 4, 8)  # the candidates timed against F.linear

# (row bucket, N, K, dtype, device, has bias) -> the fastest split, 1 for F.linear
_choice: dict[tuple, int] = {}
_preparing = 0  # depth of preparing_capture() blocks


@contextlib.contextmanager
def preparing_capture() -> Iterator[None]:
    """Eager calls inside this block warm up a CUDA graph capture: ``linear`` times the shapes
    it has not seen and runs the split the capture will run."""
    global _preparing
    _preparing += 1
    try:
        yield
    finally:
        _preparing -= 1


def choices() -> dict[tuple, int]:
    """A copy of the per-shape decisions made so far (benchmarks print them)."""
    return dict(_choice)


def choice_key(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """The key of ``choices()`` that rows ``x2`` [M, K] against ``weight`` [N, K] fall under:
    (M rounded up to a power of two, N, K, dtype, device, has bias)."""
    rows = x2.shape[0]
    return (1 << (rows - 1).bit_length(), *weight.shape, x2.dtype, x2.device, bias is not None)


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, splits: int
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as ``splits`` K-slice products summed in float32; the sum
    is the Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``), ``reference.reduce`` else."""
    reference.check_inputs(x, weight, bias)
    K, N = weight.shape[1], weight.shape[0]
    x2 = x.reshape(-1, K)
    parts = partials(x2, weight.contiguous(), splits)
    if has_triton() and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        from kernels.splitk import reduce_triton

        y = reduce_triton.reduce(parts, bias, x.dtype)
    else:
        y = reference.reduce(parts, bias, x.dtype)
    return y.reshape(*x.shape[:-1], N)


def _eligible(x: torch.Tensor, weight: torch.Tensor, rows: int) -> bool:
    """Where a split may pay: see the module docstring."""
    N, K = weight.shape
    if not (
        x.is_cuda
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.is_contiguous()
        and 2 <= rows <= MAX_ROWS
        and has_triton()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    tiles = -(-rows // 128) * -(-N // 128)
    return tiles < _multiprocessors(index) and any(slice_width(K, s) for s in SPLITS)


def _measured_splits(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    key = choice_key(x2, weight, bias)
    known = _choice.get(key)  # the capture, and every warm-up after the first, stop here
    if known is not None:
        return known
    if torch.cuda.is_current_stream_capturing():
        return 1  # nothing can be timed inside a capture: decided again outside
    from kernels.graph_timing import copies_beyond_l2, graph_us

    ws = copies_beyond_l2(weight)
    times = {1: graph_us(lambda i: F.linear(x2, ws[i % len(ws)], bias))}
    for s in SPLITS:
        if slice_width(weight.shape[1], s) is not None:
            times[s] = graph_us(lambda i, s=s: split_linear(x2, ws[i % len(ws)], bias, s))
    best = min(times, key=times.__getitem__)
    _choice[key] = best
    log.info(
        "splitk %s: %s us (graphed) -> %s",
        key[:3],
        {s: round(t, 1) for s, t in times.items()},
        best,
    )
    return best


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; a few hundred rows on CUDA may be split along K.

    Args:
        x: [..., K].  weight: [N, K].  bias: [N] or None.
    Returns:
        [..., N] in the dtype of ``x``.
    """
    switch = os.environ.get(SWITCH, "")
    forced = int(switch) if switch.isdigit() else None  # 0: F.linear everywhere
    # an eager call outside a capture's warm-up is F.linear at once: one launch costs less host
    # time than two, and nothing below need run on the eager path
    if forced == 0 or not (
        forced or _preparing or (x.is_cuda and torch.cuda.is_current_stream_capturing())
    ):
        return reference.linear(x, weight, bias)
    reference.check_inputs(x, weight, bias)
    K = weight.shape[1]
    if not _eligible(x, weight, x.numel() // K if K else 0):
        return F.linear(x, weight, bias)
    if forced:
        splits = forced if slice_width(K, forced) else 1
    else:
        splits = _measured_splits(x.reshape(-1, K), weight, bias)
    if splits == 1:
        return F.linear(x, weight, bias)
    return split_linear(x, weight, bias, splits)
