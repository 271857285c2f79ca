"""SwiGLU feed-forward block of the decoder: ``down(SiLU(gate(x)) * up(x))``, no biases."""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.config import TextConfig
from engine.errors import ConfigError
from engine.model.fused import FUSED_DECODE_DEFAULT, FusedLinear, decode_linear, rows_linear
from kernels import gemv, swiglu

log = logging.getLogger(__name__)


class MLP(nn.Module):
    """Qwen2's MLP (``gate_proj``, ``up_proj``, ``down_proj``).

    Args:
        config: supplies ``hidden_size`` and ``intermediate_size``.
    """

    # calls without grad read gate_proj and up_proj as one matrix; False keeps them separate
    fuse_decode: bool = FUSED_DECODE_DEFAULT

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ConfigError(f"hidden_act {config.hidden_act!r} not supported, only 'silu'")
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self._gate_up = FusedLinear(("gate_proj", "up_proj"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., hidden]."""
        if self.fuse_decode and x.dim() == 3 and x.shape[1] == 1 and not torch.is_grad_enabled():
            down = self.down_proj
            gate_up = self._gate_up.product(self, x) if type(down) is nn.Linear else None
            if gate_up is not None:
                # kernels.gemv: SiLU(gate) * up then down_proj, or both in one GEMV where that
                # is on (INFINITEVL_GEMV_GLU=1) and times faster
                return gemv.silu_mul_linear(gate_up, down.weight, down.bias)
            gate, up = self._gate_up(self, x)
            return decode_linear(down, swiglu.silu_mul(gate, up))
        if self.fuse_decode and not torch.is_grad_enabled():
            gate, up = self._gate_up(self, x)  # a prompt or a frame: one matrix product too
            # kernels.swiglu: one Triton launch on CUDA; kernels.splitk: a frame's 256 rows
            # against K = 11,008 split along K where that times faster
            return rows_linear(self.down_proj, swiglu.silu_mul(gate, up))
        return self.down_proj(swiglu.silu_mul(self.gate_proj(x), self.up_proj(x)))
