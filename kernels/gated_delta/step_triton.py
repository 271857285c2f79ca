"""One decode step of the gated delta rule as a single Triton kernel (the project's own).

Fuses, per (batch, value head, block of V columns): the L2 norms of q and k, the scale, the decay
exp(g), the delta update of the float32 state, and the output read. The state is read once and
written once, in place; nothing else touches device memory but q, k, v, g, beta and o. No host
sync and fixed addresses, so the step can live inside a CUDA graph. Same signature as
``reference.step``; ``TRITON_INTERPRET=1`` runs it on CPU tensors for tests.
"""

import logging

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton
from kernels.gated_delta.gates_triton import log_decay
from kernels.gated_delta.reference import L2NORM_EPS, check_shapes, check_state

log = logging.getLogger(__name__)


@triton.jit
def gated_delta_step_kernel(
    q,
    k,
    v,
    g,
    beta,
    S,
    o,
    A_log,
    dt_bias,
    stride_q_b,
    stride_q_h,
    stride_k_b,
    stride_k_h,
    stride_v_b,
    stride_v_h,
    stride_g_b,
    stride_g_h,
    stride_beta_b,
    stride_beta_h,
    scale,
    eps,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr,
    RAW_GATES: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_triton.begin(PDL)  # kernels.pdl
    i_bhv = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b, i_hv = i_bhv // HV, i_bhv % HV
    # grouped value heads: value head j reads q/k head j // (HV // H)
    i_h = i_hv // (HV // H)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V

    b_q = tl.load(q + i_b * stride_q_b + i_h * stride_q_h + offs_k, mask=mask_k, other=0.0).to(
        tl.float32
    )
    b_k = tl.load(k + i_b * stride_k_b + i_h * stride_k_h + offs_k, mask=mask_k, other=0.0).to(
        tl.float32
    )
    b_v = tl.load(v + i_b * stride_v_b + i_hv * stride_v_h + offs_v, mask=mask_v, other=0.0).to(
        tl.float32
    )
    b_g = tl.load(g + i_b * stride_g_b + i_hv * stride_g_h).to(tl.float32)
    b_beta = tl.load(beta + i_b * stride_beta_b + i_hv * stride_beta_h).to(tl.float32)
    if RAW_GATES:
        # g and beta hold the raw a / b projections: g = -exp(A_log) softplus(a + dt_bias)
        b_g = log_decay(
            b_g, tl.load(dt_bias + i_hv).to(tl.float32), tl.load(A_log + i_hv).to(tl.float32)
        )
        # rounded to b's dtype, as sigmoid(b_proj x) is in the layer
        b_beta = tl.sigmoid(b_beta).to(beta.dtype.element_ty).to(tl.float32)
    if USE_QK_L2NORM:
        b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + eps)
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + eps)
    b_q = b_q * scale

    p_S = S + i_bhv * K * V + offs_k[:, None] * V + offs_v[None, :]
    mask_S = mask_k[:, None] & mask_v[None, :]
    b_S = tl.load(p_S, mask=mask_S, other=0.0) * tl.exp(b_g)  # [BK, BV]
    b_u = b_beta * (b_v - tl.sum(b_S * b_k[:, None], axis=0))  # [BV]
    b_S = b_S + b_k[:, None] * b_u[None, :]
    b_o = tl.sum(b_S * b_q[:, None], axis=0)  # [BV]
    tl.store(p_S, b_S, mask=mask_S)
    tl.store(o + i_bhv * V + offs_v, b_o.to(o.dtype.element_ty), mask=mask_v)


def block_v(B: int, HV: int, V: int, device: torch.device, share: float = 1.0) -> int:
    """Columns of V per program: the widest block (64, 32, 16) that still gives every
    multiprocessor (or ``share`` of them) a program."""
    num_sms = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else 1
    )
    for BV in (64, 32, 16):
        if B * HV * triton.cdiv(V, BV) >= share * num_sms:
            return min(BV, triton.next_power_of_2(V))
    return min(16, triton.next_power_of_2(V))


def launch_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    o: torch.Tensor,
    scale: float,
    use_qk_l2norm: bool,
    BV: int,
    num_warps: int,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
) -> None:
    """Launch ``gated_delta_step_kernel`` with an explicit block shape (for ``step`` and the bench).

    With ``A_log`` and ``dt_bias`` ([HV], contiguous), ``g`` and ``beta`` are the raw a / b
    projections and the kernel computes the gates (``reference.gates``).
    """
    raw = A_log is not None
    assert raw == (dt_bias is not None), "A_log and dt_bias go together"
    if A_log is not None and dt_bias is not None:
        assert A_log.is_contiguous() and dt_bias.is_contiguous(), "A_log, dt_bias contiguous [HV]"
        assert A_log.shape == dt_bias.shape == (v.shape[1],), "A_log, dt_bias must be [HV]"
    B, HV, V = v.shape
    H, K = q.shape[-2], q.shape[-1]
    assert state.is_contiguous() and o.is_contiguous(), (
        "state and o must be contiguous [B, HV, K, V] / [B, HV, V]"
    )
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, (
        "q, k, v need unit stride on the last dim"
    )
    assert q.stride() == k.stride(), f"q strides {q.stride()} != k strides {k.stride()}"
    grid = (B * HV, triton.cdiv(V, BV))
    gated_delta_step_kernel[grid](
        q,
        k,
        v,
        g,
        beta,
        state,
        o,
        A_log if raw else g,
        dt_bias if raw else g,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        g.stride(0),
        g.stride(1),
        beta.stride(0),
        beta.stride(1),
        scale,
        L2NORM_EPS,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BK=triton.next_power_of_2(K),
        BV=BV,
        USE_QK_L2NORM=use_qk_l2norm,
        RAW_GATES=raw,
        num_warps=num_warps,
        **pdl.launch(o),
    )


def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float,
    use_qk_l2norm: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of the gated delta rule in one Triton launch, updating ``state`` in place.

    Args:
        q, k: [B, H, K] (unit stride on K).  v: [B, HV, V] (unit stride on V).  g, beta: [B, HV].
        state: [B, HV, K, V] float32, contiguous, updated in place.
        scale: multiplies q.  use_qk_l2norm: L2-normalise q and k per head first.
        A_log, dt_bias: [HV]; when given, g and beta are the raw a / b projections and the gates
            are computed in the kernel (``reference.gates``).
    Returns:
        o: [B, HV, V] in the dtype of v.
    """
    check_shapes(q, k, v, g, beta)
    check_state(state, v, q.shape[-1])
    B, HV, V = v.shape
    o = torch.empty(B, HV, V, dtype=v.dtype, device=v.device)
    BV = block_v(B, HV, V, v.device)
    # measured on an H100 (benchmarks/RESULTS_kernels.md): one warp is enough for a 128 x 16 tile
    num_warps = 4 if BV >= 32 else 1
    launch_step(q, k, v, g, beta, state, o, scale, use_qk_l2norm, BV, num_warps, A_log, dt_bias)
    return o
