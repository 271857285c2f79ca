"""The sum of a split-K layer's float32 partial products, plus its bias, as one Triton kernel.

One program sums ``S`` partials of ``BLOCK`` outputs in float32, adds the bias and rounds once
to the output's dtype, as ``reference.reduce`` does in three torch launches.
``TRITON_INTERPRET=1`` runs it on CPU.
"""

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton


@triton.jit
def reduce_kernel(
    partials, bias, y, MN, N,
    S: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_triton.begin(PDL)  # kernels.pdl
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(partials + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y + offs, acc.to(y.dtype.element_ty), mask=mask)


def reduce(partials: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``reference.reduce`` for contiguous float32 ``partials`` [S, M, N]: [M, N] in ``dtype``."""
    assert partials.dtype == torch.float32 and partials.is_contiguous(), "float32, contiguous"
    S, M, N = partials.shape
    y = torch.empty((M, N), dtype=dtype, device=partials.device)
    BLOCK = 1024
    reduce_kernel[(triton.cdiv(M * N, BLOCK),)](
        partials, partials if bias is None else bias, y, M * N, N,
        S=S, HAS_BIAS=bias is not None, BLOCK=BLOCK, num_warps=4, **pdl.launch(partials),
    )  # fmt: skip
    return y
