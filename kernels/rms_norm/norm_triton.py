"""The RMS norms of the decoder as one Triton kernel each: one program per block of BR rows.

``add_rms_norm`` also does the residual add before the norm (the decode step's two per layer).
A decode step has a few rows: one each (BR = 1). A prompt's gated norm is one row of 128 per
head and token (4M rows at 128K tokens): one row a program left each program a single warp of
work, and the 27 launches took 72 ms at 128K on the H100 against ~29 ms of memory traffic; a
block of rows a program (``_row_block``) fills the warps.

The torch forms take 4 (Qwen2's) and 7 (gated) kernels per call on CUDA; a decode token calls
them 72 and 27 times. Same contract as ``reference``; ``TRITON_INTERPRET=1`` runs it on CPU tensors.
"""

import logging

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton

log = logging.getLogger(__name__)


@triton.jit
def rms_norm_kernel(
    x,
    gate,
    weight,
    y,
    stride_x,
    stride_g,
    N,
    eps,
    R,
    BN: tl.constexpr,
    BR: tl.constexpr,
    GATED: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_triton.begin(PDL)  # kernels.pdl
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    offs = tl.arange(0, BN)
    mask = (rows < R)[:, None] & (offs < N)[None, :]
    b_x = tl.load(x + rows[:, None] * stride_x + offs[None, :], mask=mask, other=0.0)
    b_x = b_x.to(tl.float32)
    b_n = b_x * tl.rsqrt(tl.sum(b_x * b_x, axis=1) / N + eps)[:, None]
    b_w = tl.load(weight + offs, mask=offs < N, other=0.0)[None, :]
    if GATED:
        b_g = tl.load(gate + rows[:, None] * stride_g + offs[None, :], mask=mask, other=0.0)
        b_g = b_g.to(tl.float32)
        b_y = b_n * b_w.to(tl.float32) * (b_g * tl.sigmoid(b_g))
    else:
        # Qwen2: back to the input dtype first, then times the weight (rounded as torch does)
        b_y = b_n.to(x.dtype.element_ty).to(tl.float32) * b_w.to(tl.float32)
    tl.store(y + rows[:, None] * N + offs[None, :], b_y.to(y.dtype.element_ty), mask=mask)


@triton.jit
def add_rms_norm_kernel(
    x, h, weight, s, y, stride_x, stride_h, N, eps, R, BN: tl.constexpr, BR: tl.constexpr,
    PDL: tl.constexpr = False,
):  # fmt: skip
    pdl_triton.begin(PDL)  # kernels.pdl
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    offs = tl.arange(0, BN)
    mask = (rows < R)[:, None] & (offs < N)[None, :]
    b_x = tl.load(x + rows[:, None] * stride_x + offs[None, :], mask=mask, other=0.0)
    b_h = tl.load(h + rows[:, None] * stride_h + offs[None, :], mask=mask, other=0.0)
    # the residual add rounded to the stream's dtype, as torch's add
    b_s = (b_x.to(tl.float32) + b_h.to(tl.float32)).to(s.dtype.element_ty)
    tl.store(s + rows[:, None] * N + offs[None, :], b_s, mask=mask)
    b_s32 = b_s.to(tl.float32)
    b_n = b_s32 * tl.rsqrt(tl.sum(b_s32 * b_s32, axis=1) / N + eps)[:, None]
    b_w = tl.load(weight + offs, mask=offs < N, other=0.0)[None, :]
    b_y = b_n.to(s.dtype.element_ty).to(tl.float32) * b_w.to(tl.float32)
    tl.store(y + rows[:, None] * N + offs[None, :], b_y.to(y.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as [rows, N] with unit stride on N (a copy only when it is not already)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


# a program's block holds at least this many values when there are rows enough to share
BLOCK_VALUES = 4096
# rows below which each row keeps a program of its own (a decode step's norms)
FEW_ROWS = 1024


def _row_block(R: int, N: int, weight: torch.Tensor) -> tuple[int, int, int]:
    """(BN, BR, num_warps) of programs normalising BR rows of N each (R rows in all), after
    checking ``weight`` is [N]."""
    assert weight.shape == (N,) and weight.is_contiguous(), (
        f"weight {tuple(weight.shape)} must be [{N}], contiguous"
    )
    BN = triton.next_power_of_2(N)
    BR = 1 if R < FEW_ROWS else max(1, BLOCK_VALUES // BN)
    values = BN * BR
    return BN, BR, 8 if values >= 4096 else 4 if values >= 1024 else 1


def _launch(
    x: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    N = x.shape[-1]
    x2 = _rows(x)
    g2 = _rows(gate) if gate is not None else x2
    R = x2.shape[0]
    BN, BR, num_warps = _row_block(R, N, weight)
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    rms_norm_kernel[(triton.cdiv(R, BR),)](
        x2,
        g2,
        weight,
        y,
        x2.stride(0),
        g2.stride(0),
        N,
        eps,
        R,
        BN=BN,
        BR=BR,
        GATED=gate is not None,
        num_warps=num_warps,
        **pdl.launch(x2),
    )
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2's RMSNorm of ``x`` [..., N] (``reference.rms_norm``) in one launch."""
    dtype = torch.promote_types(weight.dtype, x.dtype)  # as weight * x.to(x.dtype) in torch
    return _launch(x, None, weight, eps, dtype)


def gated_rms_norm(
    o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """Gated DeltaNet's gated RMSNorm (``reference.gated_rms_norm``) in one launch."""
    assert o.shape == gate.shape, f"o {tuple(o.shape)} vs gate {tuple(gate.shape)}"
    return _launch(o, gate, weight, eps, o.dtype)


def add_rms_norm(
    x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.add_rms_norm`` (residual add + Qwen2's RMSNorm) in one launch; x, h one dtype."""
    assert x.shape == h.shape and x.dtype == h.dtype, (
        f"x {tuple(x.shape)} {x.dtype} vs h {tuple(h.shape)} {h.dtype}"
    )
    N = x.shape[-1]
    x2, h2 = _rows(x), _rows(h)
    R = x2.shape[0]
    BN, BR, num_warps = _row_block(R, N, weight)
    s = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    add_rms_norm_kernel[(triton.cdiv(R, BR),)](
        x2,
        h2,
        weight,
        s,
        y,
        x2.stride(0),
        h2.stride(0),
        N,
        eps,
        R,
        BN=BN,
        BR=BR,
        num_warps=num_warps,
        **pdl.launch(x2),
    )
    return s, y
