"""RMS normalisation: the residual-stream norm of Qwen2 and the gated norm of Gated DeltaNet.

Both keep the names of the published checkpoints (a single ``weight``); neither knows which layer
uses it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class RMSNorm(nn.Module):
    """Qwen2's RMSNorm: normalise in float32, cast back, then scale by ``weight``.

    Args:
        hidden_size: width of the last dimension.
        eps: added to the mean square before the reciprocal square root.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [..., hidden_size]; returns the same shape in the dtype of the product.

        Qwen2 multiplies ``weight`` by ``x`` already cast to the input dtype, so bf16 weights give
        a bf16 result and float32 weights a float32 one, exactly as transformers does.
        """
        input_dtype = x.dtype
        # F.rms_norm: x * rsqrt(mean(x^2) + eps), one fused kernel on CUDA (same ops on CPU)
        x = F.rms_norm(x.to(torch.float32), (x.shape[-1],), eps=self.eps)
        return self.weight * x.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Gated DeltaNet's output norm: ``RMSNorm(o) * weight * SiLU(gate)`` per value head.

    Matches flash-linear-attention's ``FusedRMSNormGated`` (activation ``swish``): the whole
    product is computed in float32 and cast to the dtype of ``o`` at the end.

    Args:
        head_dim: width of one value head (V); ``weight`` is [V], shared by all heads.
        eps: the layer's ``norm_eps`` (1e-5 in the published config).
    """

    def __init__(self, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Normalise ``o`` [..., V] per head and gate it with ``gate`` [..., V] (same shape).

        Returns:
            [..., V] in the dtype of ``o``.
        """
        assert o.shape == gate.shape, f"o {tuple(o.shape)} vs gate {tuple(gate.shape)}"
        # (o * rsqrt(mean(o^2) + eps) * weight) * SiLU(gate); the norm one kernel on CUDA
        w32 = self.weight.to(torch.float32)
        o32 = F.rms_norm(o.to(torch.float32), (o.shape[-1],), w32, self.eps)
        return (o32 * F.silu(gate.to(torch.float32))).to(o.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"
