"""Quantized linear layers in plain torch: dequantize to float32, then one matmul (the ground truth).

Storage formats (the portable ones, as a quantized checkpoint holds them; ``engine.quant`` writes
them):

| format | codes | scales |
| --- | --- | --- |
| int8 | ``int8 [N, K]``, symmetric, w = q * scale | ``scale [N]`` (one per output row) |
| int4 | ``uint8 [N, K / 2]``, two codes a byte (low nibble = even k), w = (q - 8) * scale + zero | ``scale, zero [N, K / G]`` (one per group of G inputs) |
| nf4 | ``uint8 [ceil(N * K / 2)]`` over the flattened weight (low nibble = even index), w = NF4[q] * absmax | ``absmax [ceil(N * K / B)]`` (one per block of B values) |

int4 follows tinygemm's convention (torch's ``_weight_int4pack_mm*``), nf4 QLoRA's code book.
"""

import torch
import torch.nn.functional as F

# QLoRA's NormalFloat4: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
INT4_OFFSET = 8


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., M] -> int32 [..., 2 M]: the low nibble first (even index), then the high one."""
    lo = (packed & 0x0F).to(torch.int32)
    hi = (packed >> 4).to(torch.int32)
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int [..., 2 M] with values in [0, 15] -> uint8 [..., M] (inverse of ``unpack_nibbles``)."""
    assert codes.shape[-1] % 2 == 0, f"an even number of codes is needed, got {codes.shape[-1]}"
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] and scale [N] -> float32 [N, K]."""
    return qweight.float() * scale.float()[:, None]


def dequantize_int4(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] and scale, zero [N, K / G] -> float32 [N, K]."""
    q = unpack_nibbles(qweight)  # [N, K]
    N, K = q.shape
    G = K // scale.shape[1]
    codes = (q.float() - INT4_OFFSET).view(N, K // G, G)
    return (codes * scale.float()[..., None] + zero.float()[..., None]).view(N, K)


def dequantize_nf4(
    qweight: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, int], block_size: int
) -> torch.Tensor:
    """uint8 [ceil(N K / 2)] and absmax [ceil(N K / B)] -> float32 [N, K] (``shape``)."""
    N, K = shape
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=qweight.device)
    values = code[unpack_nibbles(qweight)]  # [2 * ceil(N K / 2)]
    blocks = absmax.numel() * block_size
    values = F.pad(values, (0, blocks - values.numel()))[:blocks].view(-1, block_size)
    return (values * absmax.float()[:, None]).flatten()[: N * K].view(N, K)


def _linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def int8_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x W^T + b with W = dequantize_int8(qweight, scale).

    Args:
        x: [..., K].  qweight: int8 [N, K].  scale: [N].  bias: [N] or None.
    Returns:
        [..., N] in the dtype of x (computed in float32).
    """
    return _linear(x, dequantize_int8(qweight, scale), bias)


def int4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T + b with W = dequantize_int4(qweight, scale, zero); x [..., K] -> [..., N]."""
    return _linear(x, dequantize_int4(qweight, scale, zero), bias)


def nf4_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    absmax: torch.Tensor,
    out_features: int,
    block_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T + b with W = dequantize_nf4(...) of shape [out_features, K]; x [..., K]."""
    w = dequantize_nf4(qweight, absmax, (out_features, x.shape[-1]), block_size)
    return _linear(x, w, bias)
