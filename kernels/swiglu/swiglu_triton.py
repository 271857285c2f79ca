"""``SiLU(gate) * up`` as one Triton kernel (two launches in torch), for the decoder's MLP.

The gate and up halves are read where the fused gate/up product left them (views with any row
stride). SiLU is computed as torch's CUDA kernel writes it, x / (1 + exp(-x)) in float32, and
rounded to the inputs' dtype before the product, as torch's two ops round: the result matches
``reference.silu_mul`` up to the last bit of exp. ``TRITON_INTERPRET=1`` runs it on CPU.
"""

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton
from kernels.swiglu.reference import check_inputs


@triton.jit
def silu_mul_kernel(
    gate, up, y, stride_g, stride_u, N, BN: tl.constexpr, PDL: tl.constexpr = False
):
    pdl_triton.begin(PDL)  # kernels.pdl
    # rows on the first grid axis: a prompt's rows can pass the 65,535 limit of the others
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BN + tl.arange(0, BN)
    mask = offs < N
    b_g = tl.load(gate + row * stride_g + offs, mask=mask, other=0.0)
    b_u = tl.load(up + row * stride_u + offs, mask=mask, other=0.0)
    g32 = b_g.to(tl.float32)
    act = (g32 / (1.0 + tl.exp(-g32))).to(b_g.dtype)
    out = act.to(tl.float32) * b_u.to(tl.float32)
    tl.store(y + row * N + offs, out.to(y.dtype.element_ty), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` for ``gate``, ``up`` [..., N] (unit stride on N, same dtype)."""
    check_inputs(gate, up)
    N = gate.shape[-1]
    g2, u2 = gate.reshape(-1, N), up.reshape(-1, N)
    assert g2.stride(-1) == 1 and u2.stride(-1) == 1 and gate.dtype == up.dtype, (
        "unit stride, one dtype"
    )
    y = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    BN = 1024
    silu_mul_kernel[(g2.shape[0], triton.cdiv(N, BN))](
        g2, u2, y, g2.stride(0), u2.stride(0), N, BN=BN, num_warps=4, **pdl.launch(g2)
    )
    return y
