"""RMS normalisation: the residual-stream norm of Qwen2 and the gated norm of Gated DeltaNet.

Both keep the names of the published checkpoints (a single ``weight``); neither knows which layer
uses it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from kernels import rms_norm

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
        # kernels.rms_norm: one Triton launch on CUDA without grad, else these torch ops
        return rms_norm.rms_norm(x, self.weight, self.eps)

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
        # kernels.rms_norm: one Triton launch on CUDA without grad, else the torch ops
        return rms_norm.gated_rms_norm(o, gate, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"
