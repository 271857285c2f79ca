"""Torch reference of the SwiGLU product of the decoder's MLP: ``SiLU(gate) * up``."""

import torch
import torch.nn.functional as F


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` (each op rounded to the inputs' dtype, as torch does); same shapes."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    return F.silu(gate) * up
