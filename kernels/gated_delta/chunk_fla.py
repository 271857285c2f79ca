"""Chunked gated delta rule on CUDA through flash-linear-attention's Triton kernel (``fla-core``).

Same signature and results as ``reference.chunk``. fla is imported on first use only, so CPU
installs never need it; callers go through ``kernels.gated_delta.chunk``, never through fla.
"""

import functools
import importlib.util
import logging
import re
from collections.abc import Callable

import torch

from kernels import has_triton
from kernels.gated_delta.reference import check_shapes, check_state

log = logging.getLogger(__name__)

FLA_CHUNK_SIZES = (16, 32, 64)


@functools.cache
def is_available() -> bool:
    """True when fla-core and Triton can be imported (fla's kernels still need a CUDA device)."""
    return importlib.util.find_spec("fla") is not None and has_triton()


@functools.cache
def backward_is_safe(device: torch.device) -> bool:
    """Whether fla's backward runs on ``device``: fla 0.6 refuses it on Hopper (sm_90) with Triton
    >= 3.4, < 3.7.1, which computes the gated dq/dk/dw wrongly there (fla issue #640), unless
    tilelang is installed. Seen on the lent H100 with Triton 3.6.
    """
    if device.type != "cuda":
        return False
    import triton

    version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:3])
    broken_triton = (3, 4, 0) <= version < (3, 7, 1)
    hopper = torch.cuda.get_device_capability(device)[0] == 9
    return not (hopper and broken_triton and importlib.util.find_spec("tilelang") is None)


@functools.cache
def _fla_chunk() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    log.info("gated_delta.chunk: using flash-linear-attention's chunk_gated_delta_rule")
    return chunk_gated_delta_rule


def chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule through fla (CUDA, Triton); differentiable.

    Args:
        q, k: [B, T, H, K].  v: [B, T, HV, V].  g (log decay, float32 preferred), beta: [B, T, HV].
        scale: multiplies q.  initial_state: [B, HV, K, V] float32 or None; never modified.
        use_qk_l2norm: L2-normalise q and k per head inside the kernel.
        chunk_size: 16, 32 or 64 (fla's choices).
    Returns:
        o: [B, T, HV, V] in the dtype of v.  final_state: [B, HV, K, V] float32.
    """
    check_shapes(q, k, v, g, beta)
    if initial_state is not None:
        check_state(initial_state, v, q.shape[-1], "initial_state")
    if chunk_size not in FLA_CHUNK_SIZES:
        raise ValueError(f"gated_delta.chunk (fla): chunk_size must be one of {FLA_CHUNK_SIZES}, got {chunk_size}")
    assert q.is_cuda, f"fla's chunk kernel needs CUDA tensors, got {q.device}"
    # fla reads the last dim with unit stride; views from the projections may not have it
    q, k, v, g, beta = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, g, beta))
    o, final_state = _fla_chunk()(
        q,
        k,
        v,
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=True,
        use_qk_l2norm_in_kernel=use_qk_l2norm,
        chunk_size=chunk_size,
    )
    return o.to(v.dtype), final_state.float()
