"""CPU fast paths of the quantized linear layers: torch's weight-only int8 and int4 kernels.

``_weight_int8pack_mm`` reads the portable int8 codes as they are. ``_weight_int4pack_mm_for_cpu``
needs the codes in a layout of its own, which depends on the CPU's vector width (AVX-512 or
AVX2): :func:`pack_int4` builds it on the machine that runs it, never for a file.
"""

import torch
import torch.nn.functional as F

from kernels.qlinear import reference

# from this many rows on (prefill), dequantizing once and running the float GEMM beats the
# weight-only kernels, which are written for matrix-vector products (benchmarks/quant_bench.py)
DEQUANT_MIN_ROWS = 16
INT4_GROUP_SIZES = (32, 64, 128, 256)


def int8_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Same as ``reference.int8_linear``; x float32/bfloat16/float16 on the CPU.

    Args:
        x: [..., K].  qweight: int8 [N, K] contiguous.  scale: [N].  bias: [N] or None.
    Returns:
        [..., N] in the dtype of x.
    """
    assert qweight.dtype == torch.int8 and qweight.is_contiguous(), "int8 [N, K] contiguous codes"
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] >= DEQUANT_MIN_ROWS:
        w = reference.dequantize_int8(qweight, scale).to(x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))
    y = torch._weight_int8pack_mm(x2.contiguous(), qweight, scale.to(x.dtype))
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*x.shape[:-1], qweight.shape[0])


def supports_int4(out_features: int, in_features: int, group_size: int) -> bool:
    """Whether torch's CPU int4 kernel takes this shape (N a multiple of 16, whole groups)."""
    return (
        out_features % 16 == 0 and group_size in INT4_GROUP_SIZES and in_features % group_size == 0
    )


def pack_int4(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Portable int4 codes uint8 [N, K / 2] -> the CPU kernel's packed uint8 weight."""
    q = reference.unpack_nibbles(qweight)  # [N, K] int32
    assert supports_int4(q.shape[0], q.shape[1], q.shape[1] // scale.shape[1]), "unsupported shape"
    return torch._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)


def scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """scale, zero [N, K / G] -> [K / G, N, 2] in ``dtype`` (the kernel's operand)."""
    return torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous().to(dtype)


def int4_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales_zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T + b with W in the packed layout of :func:`pack_int4`.

    Args:
        x: [..., K].  packed: from :func:`pack_int4`.  scales_zeros: [K / G, N, 2] in x's dtype.
    Returns:
        [..., N] in the dtype of x.
    """
    N = scales_zeros.shape[1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch._weight_int4pack_mm_for_cpu(x2, packed, group_size, scales_zeros)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*x.shape[:-1], N)
