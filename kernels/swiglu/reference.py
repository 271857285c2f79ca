"""Torch reference of the SwiGLU product of the decoder's MLP: ``SiLU(gate) * up``."""

import torch
import torch.nn.functional as F


def check_inputs(gate: torch.Tensor, up: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes unless ``gate`` and ``up`` have one shape."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` (each op rounded to the inputs' dtype, as torch does); same shapes."""
    check_inputs(gate, up)
    return F.silu(gate) * up
