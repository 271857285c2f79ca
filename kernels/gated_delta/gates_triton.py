"""Gated DeltaNet's two gates for T prompt tokens as one Triton kernel.

The torch form (``reference.gates``) is seven launches a layer over [B, T, HV]: a float copy, the
bias, softplus, exp, two products and a sigmoid. In a frame step (256 tokens, 27 layers) they
were ~190 launches of a few microseconds each. Here one program reads a block of rows of a and b
(strided views of the fused projection work) and writes g in float32 and beta in b's dtype.
Same contract as ``reference.gates``; ``TRITON_INTERPRET=1`` runs it on CPU tensors for tests.
"""

import logging

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)


@triton.jit
def log_decay(a, dt_bias, A_log):
    """g = -exp(A_log) softplus(a + dt_bias) in float32 (softplus with torch's threshold: x itself
    above 20); shared with the decode step's kernel (``step_triton``, raw gates)."""
    x = a + dt_bias
    return -tl.exp(A_log) * tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def gates_kernel(
    a, b, A_log, dt_bias, g, beta, stride_a, stride_b, N, HV,
    BN: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_h = tl.arange(0, BH)
    mask_h = offs_h < HV
    mask = (offs_n < N)[:, None] & mask_h[None, :]
    rows = offs_n.to(tl.int64)[:, None]
    b_a = tl.load(a + rows * stride_a + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    b_bias = tl.load(dt_bias + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    b_A = tl.load(A_log + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    b_g = log_decay(b_a, b_bias[None, :], b_A[None, :])
    tl.store(g + rows * HV + offs_h[None, :], b_g, mask=mask)
    b_b = tl.load(b + rows * stride_b + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(beta + rows * HV + offs_h[None, :], tl.sigmoid(b_b).to(beta.dtype.element_ty), mask=mask)


def gates(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.gates`` in one launch.

    Args:
        a, b: [..., HV] (unit stride on HV; rows may be strided).  A_log, dt_bias: [HV].
    Returns:
        g: [..., HV] float32, contiguous.  beta: [..., HV] in b's dtype, contiguous.
    """
    HV = a.shape[-1]
    if b.shape != a.shape or A_log.shape != (HV,) or dt_bias.shape != (HV,):
        raise ValueError(
            f"gates: a {tuple(a.shape)}, b {tuple(b.shape)}, A_log {tuple(A_log.shape)}, "
            f"dt_bias {tuple(dt_bias.shape)}: expected [..., HV], [..., HV], [HV], [HV]"
        )
    a2, b2 = a.reshape(-1, HV), b.reshape(-1, HV)  # views for the engine's row-strided slices
    assert a2.stride(1) == 1 and b2.stride(1) == 1, "a, b unit stride on HV"
    N = a2.shape[0]
    g = torch.empty(a.shape, dtype=torch.float32, device=a.device)
    beta = torch.empty(b.shape, dtype=b.dtype, device=b.device)
    BH = triton.next_power_of_2(HV)
    BN = max(1, 4096 // BH)
    gates_kernel[(triton.cdiv(N, BN),)](
        a2, b2, A_log.detach().contiguous(), dt_bias.detach().contiguous(), g, beta,
        a2.stride(0), b2.stride(0), N, HV, BN=BN, BH=BH, num_warps=4,
    )  # fmt: skip
    return g, beta
