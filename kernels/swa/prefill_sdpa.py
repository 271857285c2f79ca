"""Sliding-window prefill on CUDA through torch's fused SDPA kernels, in the inputs' own dtype.

The first prompt of a session that fits in the window is plain causal attention (the flash
kernel); anything else runs the banded mask one block of queries at a time (the memory-efficient
kernel), like ``reference.prefill`` but without the float32 upcast. cuDNN's backend is left out:
it re-plans on every new key length (~44 ms a call on an H100, see PERFORMANCE.md).
"""

import logging

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from kernels.sdpa import SDPA_BACKENDS
from kernels.swa.reference import banded_attention, check_inputs, ring_then

log = logging.getLogger(__name__)

QUERY_BLOCK = 2048  # scores per block: [B, H, 2048, 2048 + W]


def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int,
    *,
    scale: float,
) -> torch.Tensor:
    """Banded causal attention of T new tokens over the ring's valid entries and themselves.

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D].  ring_k, ring_v: [B, Hkv, W, D], not modified.
        seen: tokens written before this call.  scale: multiplies q k^T.
    Returns:
        o: [B, H, T, D] in the dtype of q; differentiable w.r.t. q, k, v.
    """
    check_inputs(q, k, v, ring_k, ring_v, seen)
    T, W = q.shape[2], ring_k.shape[2]
    with sdpa_kernel(SDPA_BACKENDS):
        if seen == 0 and T <= W:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        keys, values = ring_then(ring_k, k, seen, k.dtype), ring_then(ring_v, v, seen, v.dtype)
        return banded_attention(q, keys, values, seen, W, scale, QUERY_BLOCK)
