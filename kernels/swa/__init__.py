"""Sliding-window attention over a ring buffer: dispatchers that pick a fast path or the reference.

``prefill`` attends T new tokens over the ring and themselves, ``write`` stores them, ``step``
stores and attends one decode token. Shapes and semantics: ``kernels.swa.reference``.
"""

import logging

import torch

from kernels.swa import reference

log = logging.getLogger(__name__)

__all__ = ["prefill", "reference", "step", "write"]


def _want_kernel(x: torch.Tensor, use_kernel: bool | None, op: str) -> bool:
    """Resolve ``use_kernel``: None picks the fast path where one exists for ``x``'s device."""
    if use_kernel:
        raise ValueError(f"swa.{op}: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA")
    return False


def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int,
    *,
    scale: float,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """Banded causal attention of T new tokens over the ring's valid entries and themselves.

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D].  ring_k, ring_v: [B, Hkv, W, D], not modified.
        seen: tokens written before this call.  scale: multiplies q k^T.
        use_kernel: True forces the fast path, False the reference, None picks by device.
    Returns:
        o: [B, H, T, D] in the dtype of q.
    """
    _want_kernel(q, use_kernel, "prefill")
    return reference.prefill(q, k, v, ring_k, ring_v, seen, scale=scale)


def write(ring_k: torch.Tensor, ring_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: int) -> None:
    """Store the last min(T, W) keys/values (k, v: [B, Hkv, T, D]) at slots (token index % W), in place."""
    reference.write(ring_k, ring_v, k, v, seen)


def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int,
    *,
    scale: float,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """One decode token: store k, v at slot seen % W, then attend over min(seen + 1, W) entries.

    Args:
        q: [B, H, D].  k, v: [B, Hkv, D].  ring_k, ring_v: [B, Hkv, W, D], modified.
        seen: tokens before this one.  scale: multiplies q k^T.
        use_kernel: True forces the fast path, False the reference, None picks by device.
    Returns:
        o: [B, H, D] in the dtype of q.
    """
    _want_kernel(q, use_kernel, "step")
    return reference.step(q, k, v, ring_k, ring_v, seen, scale=scale)
