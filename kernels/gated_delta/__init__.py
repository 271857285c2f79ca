"""Gated delta rule (Gated DeltaNet's recurrence): dispatchers that pick a fast path or the reference.

``chunk`` is for prompts (prefill), ``step`` for one decode token, ``recurrent`` the token loop.
Shapes and semantics are those of ``kernels.gated_delta.reference`` (docs/INTERFACES.md).
"""

import logging

import torch

from kernels.gated_delta import reference

log = logging.getLogger(__name__)

__all__ = ["chunk", "recurrent", "reference", "step"]


def _want_kernel(x: torch.Tensor, use_kernel: bool | None, op: str) -> bool:
    """Resolve ``use_kernel``: None picks the fast path where one exists for ``x``'s device."""
    if use_kernel is None:
        return False
    if use_kernel:
        raise ValueError(
            f"gated_delta.{op}: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA with Triton"
        )
    return False


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
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule for prefill.

    Args:
        q, k: [B, T, H, K].  v: [B, T, HV, V].  g (log decay), beta: [B, T, HV]; HV % H == 0.
        scale: multiplies q.  initial_state: [B, HV, K, V] float32 or None; never modified.
        use_qk_l2norm: L2-normalise q and k per head.  chunk_size: tokens per chunk.
        use_kernel: True forces the fast path, False the reference, None picks by device.
    Returns:
        o: [B, T, HV, V] in the dtype of v.  final_state: [B, HV, K, V] float32.
    """
    _want_kernel(q, use_kernel, "chunk")
    return reference.chunk(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, use_qk_l2norm=use_qk_l2norm, chunk_size=chunk_size
    )


def recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token gated delta rule; same arguments and results as ``chunk``."""
    _want_kernel(q, use_kernel, "recurrent")
    return reference.recurrent(q, k, v, g, beta, scale=scale, initial_state=initial_state, use_qk_l2norm=use_qk_l2norm)


def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float,
    use_qk_l2norm: bool = False,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """One decode step of the gated delta rule.

    Args:
        q, k: [B, H, K].  v: [B, HV, V].  g (log decay), beta: [B, HV].
        state: [B, HV, K, V] float32, updated in place.
        scale: multiplies q.  use_qk_l2norm: L2-normalise q and k per head.
        use_kernel: True forces the fast path, False the reference, None picks by device.
    Returns:
        o: [B, HV, V] in the dtype of v.
    """
    _want_kernel(q, use_kernel, "step")
    return reference.step(q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm)
