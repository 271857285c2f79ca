"""Quantized linear layers: dispatchers over torch's CPU kernels, bitsandbytes on CUDA, and the
reference (``reference.py``: dequantize, then one float32 matmul).

Formats and conventions are in ``reference.py``; ``engine.quant`` quantizes models with them.
"""

import functools
import importlib.util

import torch

from kernels.qlinear import cpu, reference

__all__ = ["cpu", "has_bitsandbytes", "int8_linear", "reference"]


@functools.cache
def has_bitsandbytes() -> bool:
    """True when bitsandbytes can be imported (its CUDA modules run NF4 and int8 on GPUs)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def int8_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """y = x W^T + b, W int8 [N, K] times scale [N]: torch's CPU kernel on the CPU, else the reference.

    Args:
        x: [..., K].  use_kernel: None picks the CPU kernel for CPU tensors; False the reference.
    Returns:
        [..., N] in the dtype of x.
    """
    if use_kernel is None:
        use_kernel = x.device.type == "cpu"
    if use_kernel:
        if x.device.type != "cpu":
            raise ValueError(f"qlinear.int8_linear: no fast kernel for device {x.device.type!r}")
        return cpu.int8_linear(x, qweight, scale, bias)
    return reference.int8_linear(x, qweight, scale, bias)
