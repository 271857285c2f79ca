"""Batch-1 linear layer as one Triton kernel: every weight byte streamed once, fp32 accumulation.

A decode token multiplies one activation row by each weight matrix, so the product is a pure
read of the weights: each program takes ``BLOCK_N`` rows of ``weight`` [N, K] and walks along K
in tiles of ``BLOCK_K``, multiply-adding in float32 registers and reducing once at the end. K is
a compile-time constant (one build per width). The tile shape is autotuned per (N, K) on first
use, outside any CUDA graph capture (the decode graph's eager warm-up steps run it first). Same
contract as ``reference.linear``; ``TRITON_INTERPRET=1`` runs it on CPU tensors for tests.
"""

import logging
import os

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton
from kernels.gemv.reference import check_inputs

log = logging.getLogger(__name__)

# (BLOCK_N, BLOCK_K, num_warps): from 1 to 32 rows a program, 4 to 32 KiB of bf16 weights a tile
_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw)
    for bn, bk, nw in [
        (1, 2048, 4),
        (2, 1024, 4),
        (2, 2048, 4),
        (4, 1024, 4),
        (4, 2048, 8),
        (8, 512, 4),
        (8, 1024, 8),
        (16, 256, 4),
        (16, 512, 8),
        (32, 256, 8),
    ]
]


@triton.jit
def _input_tile(x, k0, offs_k, mask_k, K: tl.constexpr, GLU: tl.constexpr):
    """The float32 tile of the input row at ``k0``."""
    if GLU:
        # x holds [gate | up] (2K): the SwiGLU product made here, rounded as
        # kernels.swiglu rounds it, so the GEMV reads what the separate kernels would write
        b_g = tl.load(x + k0 + offs_k, mask=mask_k, other=0.0)
        b_u = tl.load(x + K + k0 + offs_k, mask=mask_k, other=0.0)
        g32 = b_g.to(tl.float32)
        act = (g32 / (1.0 + tl.exp(-g32))).to(b_g.dtype)
        return (act.to(tl.float32) * b_u.to(tl.float32)).to(b_g.dtype).to(tl.float32)
    return tl.load(x + k0 + offs_k, mask=mask_k, other=0.0).to(tl.float32)


@triton.jit
def gemv_kernel(
    x,
    w,
    b,
    y,
    N,
    stride_w,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GLU: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    p_w = w + offs_n.to(tl.int64)[:, None] * stride_w + offs_k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    start: tl.constexpr = BLOCK_K if PDL else 0
    if PDL:
        # kernels.pdl: the first tile of weights (no kernel writes them) is read while the
        # kernel before ends; the input row only after it has
        mask_k = offs_k < K
        b_w = tl.load(
            p_w, mask=mask_n[:, None] & mask_k[None, :], other=0.0, eviction_policy="evict_first"
        )
        pdl_triton.begin(PDL)
        acc += b_w.to(tl.float32) * _input_tile(x, 0, offs_k, mask_k, K, GLU)[None, :]
    for k0 in range(start, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        b_x = _input_tile(x, k0, offs_k, mask_k, K, GLU)
        # weights are read exactly once: keep them from evicting what the next kernels reuse
        b_w = tl.load(
            p_w + k0,
            mask=mask_n[:, None] & mask_k[None, :],
            other=0.0,
            eviction_policy="evict_first",
        )
        acc += b_w.to(tl.float32) * b_x[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y + offs_n, out.to(y.dtype.element_ty), mask=mask_n)


# autotuned per (N, K) on CUDA; the CPU interpreter (tests) has no device to time on
gemv_tuned = triton.autotune(configs=_CONFIGS, key=["N", "K"])(gemv_kernel)
# the same kernel making its input from [gate | up]: its own tiles (it reads twice the input)
gemv_glu_tuned = triton.autotune(configs=_CONFIGS, key=["N", "K"])(gemv_kernel)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` [..., K] holding one row (unit stride on K).

    Args:
        weight: [N, K] with unit stride on K (rows may be a view into a larger matrix).
        bias: [N] or None.
    Returns:
        [..., N] in the dtype of ``x``.
    """
    check_inputs(x, weight, bias)
    K = weight.shape[1]
    assert x.numel() == K and x.stride(-1) == 1 and weight.stride(1) == 1, (
        "one row of x, unit stride on K"
    )
    return _launch(x, weight, bias, glu=False)


def _launch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, glu: bool
) -> torch.Tensor:
    """``gemv_kernel`` over ``weight`` [N, K] for the one row ``x`` (``glu``: ``x`` is
    [gate | up], 2K): autotuned on CUDA, one fixed tile under ``TRITON_INTERPRET=1``."""
    N, K = weight.shape
    y = torch.empty(*x.shape[:-1], N, dtype=x.dtype, device=x.device)
    args = (x, weight, weight if bias is None else bias, y, N, weight.stride(0), K)
    if os.environ.get("TRITON_INTERPRET") == "1":
        gemv_kernel[(triton.cdiv(N, 4),)](
            *args, HAS_BIAS=bias is not None, BLOCK_N=4, BLOCK_K=128, GLU=glu
        )
        return y
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731 (Triton's grid idiom)
    (gemv_glu_tuned if glu else gemv_tuned)[grid](
        *args, HAS_BIAS=bias is not None, GLU=glu, **pdl.launch(x)
    )
    return y


def silu_mul_linear(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``linear(SiLU(gate) * up, weight, bias)`` in one launch, ``gate_up`` [..., 2K] one row
    holding gate then up (the MLP's fused gate/up product), unit stride; weight [N, K]."""
    check_inputs(gate_up[..., : weight.shape[-1]], weight, bias)
    K = weight.shape[1]
    assert gate_up.numel() == 2 * K and gate_up.is_contiguous() and weight.stride(1) == 1, (
        "one contiguous row of [gate | up] (2K), unit stride on K"
    )
    return _launch(gate_up, weight, bias, glu=True)
