"""Torch reference of the two RMS norms of the decoder (the engine's own math, ground truth).

``rms_norm`` is Qwen2's: normalise in float32, cast back to the input dtype, then multiply by
``weight`` (so a bf16 weight gives a bf16 product). ``gated_rms_norm`` is Gated DeltaNet's output
norm (fla's ``FusedRMSNormGated`` with SiLU): the whole product in float32, cast at the end.
"""

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)`` over the last dim of ``x`` [..., N].

    Returns:
        [..., N] in the dtype of ``weight * x`` (torch's promotion).
    """
    y = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=eps)
    return weight * y.to(x.dtype)


def gated_rms_norm(
    o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """``(o * rsqrt(mean(o^2) + eps) * weight) * SiLU(gate)`` in float32, over the last dim.

    Args:
        o, gate: [..., N] (same shape).  weight: [N].
    Returns:
        [..., N] in the dtype of ``o``.
    """
    w32 = weight.to(torch.float32)
    o32 = F.rms_norm(o.to(torch.float32), (o.shape[-1],), w32, eps)
    return (o32 * F.silu(gate.to(torch.float32))).to(o.dtype)


def add_rms_norm(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next Qwen2 RMSNorm: ``s = x + h``, then ``rms_norm(s)``.

    Returns:
        (s [..., N] in the dtype of ``x + h``, rms_norm(s, weight, eps)).
    """
    s = x + h
    return s, rms_norm(s, weight, eps)
