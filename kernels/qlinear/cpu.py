"""CPU fast paths of the quantized linear layers: torch's int8/int4 weight-only kernels, and
fbgemm's dynamic int8 GEMM (activations quantized per call too).

Measured on this project's 2-core AVX2 machines (benchmarks/quant_bench.py, docs/quantization.md):
the weight-only kernels are fast with bfloat16 activations and slow with float32 ones, so float32
callers go through bfloat16; fbgemm's dynamic GEMM takes float32 only. ``_weight_int4pack_mm``
and fbgemm want the weights in layouts of their own, which depend on the CPU (AVX-512 or AVX2):
:func:`pack_int4` and :func:`pack_int8_dynamic` build them on the machine that runs them.
"""

import warnings

import torch

from kernels.qlinear import reference

INT4_GROUP_SIZES = (32, 64, 128, 256)
# fbgemm without VNNI adds u8 x s8 products in saturating int16 pairs: 7-bit activations keep
# those sums in range (relative error 1.6% instead of 3.5% on Gaussian inputs)
REDUCE_RANGE = True


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()


def int8_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x W^T + b, weight-only int8 (``reference.int8_linear`` with bf16 activations).

    Args:
        x: [..., K] any float dtype (computed in bfloat16).  qweight: int8 [N, K] contiguous.
        scale: [N].  bias: [N] or None.
    Returns:
        [..., N] in the dtype of x.
    """
    assert qweight.dtype == torch.int8 and qweight.is_contiguous(), "int8 [N, K] contiguous codes"
    y = torch._weight_int8pack_mm(_bf16(x), qweight, scale.to(torch.bfloat16)).to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*x.shape[:-1], qweight.shape[0])


def pack_int8_dynamic(qweight: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject | None:
    """int8 codes [N, K] and scales [N] -> fbgemm's packed weight; None where fbgemm is missing."""
    N = qweight.shape[0]
    try:
        with warnings.catch_warnings():
            # quantized tensors are deprecated in torch 2.13; fbgemm's linear still takes them
            warnings.simplefilter("ignore")
            zeros = torch.zeros(N, dtype=torch.long)
            wq = torch._make_per_channel_quantized_tensor(qweight, scale.double(), zeros, 0)
            return torch.ops.quantized.linear_prepack(wq, None)
    except (RuntimeError, AttributeError):
        return None


def unpack_int8_dynamic(packed: torch.ScriptObject) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 codes [N, K] and float32 scales [N] a packed weight holds (exactly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wq, _ = torch.ops.quantized.linear_unpack(packed)
        return wq.int_repr().contiguous(), wq.q_per_channel_scales().float()


def int8_linear_dynamic(
    x: torch.Tensor, packed: torch.ScriptObject, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x W^T + b with x quantized to 7 bits per call (per tensor) and W int8 per row.

    Args:
        x: [..., K] any float dtype (computed in float32).  packed: :func:`pack_int8_dynamic`.
    Returns:
        [..., N] in the dtype of x.
    """
    x2 = x.reshape(-1, x.shape[-1]).float().contiguous()
    y = torch.ops.quantized.linear_dynamic(x2, packed, REDUCE_RANGE).to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*x.shape[:-1], y.shape[-1])


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


def scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """scale, zero [N, K / G] -> [K / G, N, 2] bfloat16 (the kernel's operand)."""
    return torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def int4_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales_zeros: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T + b with W in the packed layout of :func:`pack_int4` (bf16 activations).

    Args:
        x: [..., K] any float dtype.  packed: :func:`pack_int4`.  scales_zeros: [K / G, N, 2].
    Returns:
        [..., N] in the dtype of x.
    """
    N = scales_zeros.shape[1]
    y = torch._weight_int4pack_mm_for_cpu(_bf16(x), packed, group_size, scales_zeros).to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y.view(*x.shape[:-1], N)
