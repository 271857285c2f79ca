"""bitsandbytes layers on CUDA: NF4 (QLoRA) and LLM.int8 weights, computing in bfloat16.

Imported on first use: CPU installs never need bitsandbytes. Both builders take the float weight
(for a quantized checkpoint, its dequantized weight: NF4 and row-wise int8 codes quantize back to
themselves, since each block's absmax is one of its values).
"""

import torch
from torch import nn

NF4_BLOCK_SIZE = 64
# LLM.int8's outlier threshold as published: inputs above it run in 16-bit
INT8_THRESHOLD = 6.0


def linear_nf4(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    device: torch.device,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """A ``bitsandbytes.nn.Linear4bit`` holding ``weight`` [N, K] as NF4 on ``device`` (CUDA).

    ``compute_dtype`` is explicit: bitsandbytes would otherwise compute in float32.
    """
    import bitsandbytes as bnb

    N, K = weight.shape
    layer = bnb.nn.Linear4bit(
        K, N, bias=bias is not None, compute_dtype=compute_dtype, compress_statistics=False,
        quant_type="nf4", device="meta",
    )  # fmt: skip
    layer.weight = bnb.nn.Params4bit(
        weight.detach().to("cpu", compute_dtype), requires_grad=False, quant_type="nf4",
        blocksize=NF4_BLOCK_SIZE, compress_statistics=False,
    )  # fmt: skip
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to("cpu", compute_dtype), requires_grad=False)
    # moving a Params4bit to CUDA is what quantizes it
    return layer.to(device)


def linear_int8(weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device) -> nn.Module:
    """A ``bitsandbytes.nn.Linear8bitLt`` (row-wise int8 weights, LLM.int8 outliers) on CUDA."""
    import bitsandbytes as bnb

    N, K = weight.shape
    layer = bnb.nn.Linear8bitLt(
        K, N, bias=bias is not None, has_fp16_weights=False, threshold=INT8_THRESHOLD,
        device="meta",
    )  # fmt: skip
    layer.weight = bnb.nn.Int8Params(
        weight.detach().to("cpu", torch.float16), requires_grad=False, has_fp16_weights=False
    )
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to("cpu", torch.bfloat16), requires_grad=False)
    # moving Int8Params to CUDA is what quantizes it
    return layer.to(device)
