"""Sliding-window attention over a ring buffer: dispatchers that pick a fast path or the reference.

``prefill`` attends T new tokens over the ring and themselves, ``write`` stores them, ``step``
stores and attends one decode token. Shapes and semantics: ``kernels.swa.reference``. On CUDA,
``prefill`` runs the project's banded flash-attention Triton kernel (``prefill_triton``), or torch's
fused SDPA (``prefill_sdpa``) when grad is needed or for a first prompt within the window, and
``step`` the split-K Triton kernel (``step_triton``); Triton modules are imported on first use.
"""

import logging
import os

import torch

from kernels import has_triton
from kernels.swa import prefill_sdpa, reference

log = logging.getLogger(__name__)

__all__ = ["prefill", "prefill_full_ring", "reference", "step", "write"]


def _resolve(x: torch.Tensor, use_kernel: bool | None, op: str, available: bool) -> bool:
    """Resolve ``use_kernel``: None takes the fast path on CUDA when it is installed; True insists."""
    if use_kernel is None:
        return x.is_cuda and available
    if use_kernel and not available:
        raise ValueError(
            f"swa.{op}: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA (and Triton for step)"
        )
    return use_kernel


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
    if _resolve(q, use_kernel, "prefill", q.is_cuda):
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        # the Triton kernel has no backward; a first prompt within the window is plain causal
        # attention, which SDPA's flash kernel does as fast
        if needs_grad or not has_triton() or (seen == 0 and q.shape[2] <= ring_k.shape[2]):
            return prefill_sdpa.prefill(q, k, v, ring_k, ring_v, seen, scale=scale)
        from kernels.swa import prefill_triton

        return prefill_triton.prefill(q, k, v, ring_k, ring_v, seen, scale=scale)
    return reference.prefill(q, k, v, ring_k, ring_v, seen, scale=scale)


def prefill_full_ring(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: torch.Tensor,
    *,
    scale: float,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """``prefill`` over a full ring (``seen >= W``) with ``seen`` a tensor on q's device: no host
    sync, so one CUDA graph serves every frame (``engine.cuda_graph.attention_frame``).

    The Triton kernel reads the ring in place from its oldest slot (``prefill_triton.
    prefill_full_ring``); elsewhere, and with grad, the ring is gathered in token order on the
    device and goes through ``prefill`` as a ring of W tokens.

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D].  ring_k, ring_v: [B, Hkv, W, D], full, not modified.
        seen: 0-d int64 tensor, tokens written before these (>= W).  scale: multiplies q k^T.
        use_kernel: True forces the Triton kernel, False the gather, None picks by device and grad.
    Returns:
        o: [B, H, T, D] in the dtype of q.
    """
    runnable = q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    fast = runnable and has_triton() and not needs_grad and ring_k.dtype == k.dtype
    if _resolve(q, use_kernel, "prefill_full_ring", fast):
        from kernels.swa import prefill_triton

        return prefill_triton.prefill_full_ring(q, k, v, ring_k, ring_v, seen, scale=scale)
    W = ring_k.shape[2]
    # slots from the oldest token to the newest: (seen - W + i) % W == (seen + i) % W
    order = (torch.arange(W, device=q.device) + seen) % W
    ring_k, ring_v = ring_k.index_select(2, order), ring_v.index_select(2, order)
    # a ring in token order holding W tokens: prefill's seen=W reads it slot by slot
    return prefill(q, k, v, ring_k, ring_v, W, scale=scale, use_kernel=use_kernel)


def write(ring_k: torch.Tensor, ring_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: int) -> None:
    """Store the last min(T, W) keys/values (k, v: [B, Hkv, T, D]) at slots (token index % W), in place."""
    reference.write(ring_k, ring_v, k, v, seen)


def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int | torch.Tensor,
    *,
    scale: float,
    use_kernel: bool | None = None,
    pads: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode token: store k, v at slot seen % W, then attend over min(seen + 1, W) entries.

    Args:
        q: [B, H, D].  k, v: [B, Hkv, D].  ring_k, ring_v: [B, Hkv, W, D], modified.
        seen: tokens before this one; the Triton path also takes a 0-d int64 tensor on q's device
            (one CUDA graph then serves every position).  scale: multiplies q k^T.
        use_kernel: True forces the fast path, False the reference, None picks by device.
        pads: None, or [B] int64: row b's tokens before index pads[b] are padding, left out
            (rows aligned to decode as one batch: a beam search's, never a graph's). Only the
            reference reads them; None picks the path as above.
    Returns:
        o: [B, H, D] in the dtype of q.
    """
    if pads is not None:
        if use_kernel:
            raise ValueError("swa.step: the Triton step takes no padded rows")
        return reference.step(q, k, v, ring_k, ring_v, int(seen), scale=scale, pads=pads)
    # Triton's interpreter runs kernels on CPU tensors: how the kernel tests run without a GPU
    runnable = q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    if _resolve(q, use_kernel, "step", runnable and has_triton()):
        from kernels.swa import step_triton

        return step_triton.step(q, k, v, ring_k, ring_v, seen, scale=scale)
    if isinstance(seen, torch.Tensor):
        seen = int(seen)
    return reference.step(q, k, v, ring_k, ring_v, seen, scale=scale)
