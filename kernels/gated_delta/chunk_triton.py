"""The chunked gated delta rule for short prompts (a frame's 256 tokens, a chat turn) in two
Triton launches: the project's own, beside flash-linear-attention's (``chunk_fla``).

fla runs a prompt as four or five kernels (the scaled k k^T and its triangular solve, w and u, the
states of every chunk, the outputs), each over all chunks at once: made for long prompts. For a
frame that is 44 us a layer on the H100 (27 layers a frame), most of it in launches whose programs
have little to do; these two take 30 us (``python -m benchmarks.gdn_chunk``, where they win up to
~600 tokens). Here, with the names of ``README.md``:

- ``wy_kernel``, one program per (chunk, value head): the L2 norm of k, the cumulative decay G,
  A = diag(beta) (k k^T o D) strictly below the diagonal, (I + A)^-1 by forward substitution on
  a CHUNK x CHUNK block in registers (the chunk is short, so the substitution is too), and
  W = (I + A)^-1 diag(beta exp(G)) K and U = (I + A)^-1 diag(beta) V, written in the dtype of v.
- ``chunk_state_kernel``, one program per (value head, block of V columns), walks the chunks in
  order with its [K, BV] float32 slice of the state in registers: U' = U - W S, the outputs
  (Q exp(G)) S + (Q K^T o D) U', then S = exp(G_C) S + (K exp(G_C - G))^T U'. Each program owns
  its columns of S: no program waits on another; S is read once and written once.

The products take their operands in the dtype of the inputs (bf16 for the engine, float32 for the
tests' exact runs) with float32 accumulation, as fla's do; G, the decays and the substitution stay
float32. Padding past T (the last chunk): k = v = q = 0, g = 0, beta = 0, so padded tokens neither
decay nor write the state. Same signature and results as ``reference.chunk`` (without grad);
``TRITON_INTERPRET=1`` runs it on CPU tensors for the tests.
"""

import os

import torch
import triton
import triton.language as tl

from kernels import pdl, pdl_triton
from kernels.gated_delta import step_triton
from kernels.gated_delta.reference import L2NORM_EPS, check_shapes, check_state

CHUNK = 16  # tokens per chunk: the substitution's rows (16 is tl.dot's least, and timed best)


@triton.jit
def _chunk_rows(
    k, stride_k_t, t0, T, offs_c, offs_k, K: tl.constexpr, USE_QK_L2NORM: tl.constexpr, eps
):
    """[CHUNK, BK] float32 rows of q or k for tokens t0.. (0 past T), L2-normalised if asked."""
    mask = ((t0 + offs_c) < T)[:, None] & (offs_k < K)[None, :]
    b_k = tl.load(k + (t0 + offs_c)[:, None] * stride_k_t + offs_k[None, :], mask=mask, other=0.0)
    b_k = b_k.to(tl.float32)
    if USE_QK_L2NORM:
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, axis=1) + eps)[:, None]
    return b_k


@triton.jit
def _chunk_decay(g, beta, stride_gb_t, t0, T, offs_c):
    """G (the chunk's cumulative log decay) and beta, [CHUNK] float32 each; 0 past T."""
    mask = (t0 + offs_c) < T
    b_g = tl.load(g + (t0 + offs_c) * stride_gb_t, mask=mask, other=0.0).to(tl.float32)
    b_beta = tl.load(beta + (t0 + offs_c) * stride_gb_t, mask=mask, other=0.0).to(tl.float32)
    return tl.cumsum(b_g, axis=0), b_beta


@triton.jit
def _causal_decay(b_G, offs_c, STRICT: tl.constexpr):
    """[CHUNK, CHUNK] exp(G_i - G_j) on and below (or strictly below) the diagonal, else 0.
    The exponent is masked to -inf before exp: above the diagonal it is > 0 and may overflow."""
    keep = offs_c[:, None] > offs_c[None, :] if STRICT else offs_c[:, None] >= offs_c[None, :]
    return tl.exp(tl.where(keep, b_G[:, None] - b_G[None, :], float("-inf")))


@triton.jit
def wy_kernel(
    k,
    v,
    g,
    beta,
    w,
    u,
    T,
    stride_k_b,
    stride_k_t,
    stride_k_h,
    stride_v_b,
    stride_v_t,
    stride_v_h,
    stride_gb_b,
    stride_gb_t,
    stride_gb_h,
    eps,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BVU: tl.constexpr,
    CHUNK: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr,
    IEEE: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_triton.begin(PDL)  # kernels.pdl
    i_c = tl.program_id(0)
    i_bhv = tl.program_id(1).to(tl.int64)
    i_b, i_hv = i_bhv // HV, i_bhv % HV
    i_h = i_hv // (HV // H)  # grouped value heads read q/k head j // (HV // H)
    t0 = i_c * CHUNK
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, BK)
    # products: float32 operands for exact runs (float32 inputs, the interpreter), else v's dtype
    dt: tl.constexpr = tl.float32 if IEEE else v.dtype.element_ty
    PRECISION: tl.constexpr = "ieee" if IEEE else None

    b_k = _chunk_rows(
        k + i_b * stride_k_b + i_h * stride_k_h, stride_k_t, t0, T, offs_c, offs_k, K, USE_QK_L2NORM, eps
    )
    b_G, b_beta = _chunk_decay(
        g + i_b * stride_gb_b + i_hv * stride_gb_h, beta + i_b * stride_gb_b + i_hv * stride_gb_h,
        stride_gb_t, t0, T, offs_c,
    )  # fmt: skip
    b_kd = b_k.to(dt)
    b_kk = tl.dot(b_kd, tl.trans(b_kd), input_precision=PRECISION)  # [CHUNK, CHUNK]
    b_A = b_beta[:, None] * b_kk * _causal_decay(b_G, offs_c, True)  # strictly lower

    # L = (I + A)^-1 - I, row by row: L_i = -A_i - sum_{m<i} A_im L_m (rows m >= i of -A are 0
    # where row i of A is read, so -A is L's start); rows 0 and 1 are -A's already
    b_L = -b_A
    for i in range(2, CHUNK):
        b_a = tl.sum(tl.where(offs_c[:, None] == i, -b_A, 0.0), axis=0)  # -A_i
        b_a = b_a + tl.sum(b_a[:, None] * b_L, axis=0)
        b_L = tl.where(offs_c[:, None] == i, b_a[None, :], b_L)
    b_T = (b_L + (offs_c[:, None] == offs_c[None, :]).to(tl.float32)).to(dt)

    rows = (t0 + offs_c) < T
    b_w = tl.dot(b_T, (b_k * (b_beta * tl.exp(b_G))[:, None]).to(dt), input_precision=PRECISION)
    p_w = w + (i_bhv * T + t0 + offs_c)[:, None] * K + offs_k[None, :]
    tl.store(p_w, b_w.to(w.dtype.element_ty), mask=rows[:, None] & (offs_k < K)[None, :])
    p_v = v + i_b * stride_v_b + i_hv * stride_v_h + (t0 + offs_c)[:, None] * stride_v_t
    p_u = u + (i_bhv * T + t0 + offs_c)[:, None] * V
    for v0 in range(0, V, BVU):
        offs_v = v0 + tl.arange(0, BVU)
        mask = rows[:, None] & (offs_v < V)[None, :]
        b_v = tl.load(p_v + offs_v[None, :], mask=mask, other=0.0).to(tl.float32)
        b_u = tl.dot(b_T, (b_v * b_beta[:, None]).to(dt), input_precision=PRECISION)
        tl.store(p_u + offs_v[None, :], b_u.to(u.dtype.element_ty), mask=mask)


@triton.jit
def chunk_state_kernel(
    q,
    k,
    g,
    beta,
    w,
    u,
    S0,
    o,
    S,
    T,
    stride_k_b,
    stride_k_t,
    stride_k_h,
    stride_gb_b,
    stride_gb_t,
    stride_gb_h,
    stride_o_b,
    stride_o_t,
    stride_o_h,
    scale,
    eps,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    CHUNK: tl.constexpr,
    HAS_S0: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr,
    IEEE: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_triton.begin(PDL)  # kernels.pdl
    i_bhv = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1)
    i_b, i_hv = i_bhv // HV, i_bhv % HV
    i_h = i_hv // (HV // H)
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < K, offs_v < V
    mask_S = mask_k[:, None] & mask_v[None, :]
    dt: tl.constexpr = tl.float32 if IEEE else o.dtype.element_ty  # as in wy_kernel
    PRECISION: tl.constexpr = "ieee" if IEEE else None

    p_S = offs_k[:, None] * V + offs_v[None, :] + i_bhv * K * V
    if HAS_S0:
        b_S = tl.load(S0 + p_S, mask=mask_S, other=0.0)
    else:
        b_S = tl.zeros([BK, BV], dtype=tl.float32)
    qk_off = i_b * stride_k_b + i_h * stride_k_h
    gb_off = i_b * stride_gb_b + i_hv * stride_gb_h
    for t0 in range(0, T, CHUNK):
        rows = (t0 + offs_c) < T
        b_q = _chunk_rows(q + qk_off, stride_k_t, t0, T, offs_c, offs_k, K, USE_QK_L2NORM, eps)
        b_q = b_q * scale
        b_k = _chunk_rows(k + qk_off, stride_k_t, t0, T, offs_c, offs_k, K, USE_QK_L2NORM, eps)
        b_G, b_beta = _chunk_decay(g + gb_off, beta + gb_off, stride_gb_t, t0, T, offs_c)
        p_w = w + (i_bhv * T + t0 + offs_c)[:, None] * K + offs_k[None, :]
        b_w = tl.load(p_w, mask=rows[:, None] & mask_k[None, :], other=0.0).to(dt)
        p_u = u + (i_bhv * T + t0 + offs_c)[:, None] * V + offs_v[None, :]
        b_u = tl.load(p_u, mask=rows[:, None] & mask_v[None, :], other=0.0).to(tl.float32)

        b_Sd = b_S.to(dt)
        b_un = b_u - tl.dot(b_w, b_Sd, input_precision=PRECISION)  # U' = U - W S
        b_und = b_un.to(dt)
        b_qk = tl.dot(b_q.to(dt), tl.trans(b_k.to(dt)), input_precision=PRECISION)
        b_attn = (b_qk * _causal_decay(b_G, offs_c, False)).to(dt)
        b_o = tl.dot((b_q * tl.exp(b_G)[:, None]).to(dt), b_Sd, input_precision=PRECISION)
        b_o += tl.dot(b_attn, b_und, input_precision=PRECISION)
        p_o = o + i_b * stride_o_b + i_hv * stride_o_h + (t0 + offs_c)[:, None] * stride_o_t
        tl.store(p_o + offs_v[None, :], b_o.to(o.dtype.element_ty), mask=rows[:, None] & mask_v[None, :])

        b_G_end = tl.sum(tl.where(offs_c == CHUNK - 1, b_G, 0.0))  # padding keeps G flat
        b_k_tail = (b_k * tl.exp(b_G_end - b_G)[:, None]).to(dt)
        b_S = b_S * tl.exp(b_G_end) + tl.dot(tl.trans(b_k_tail), b_und, input_precision=PRECISION)
    tl.store(S + p_S, b_S, mask=mask_S)


def chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
    chunk_size: int = CHUNK,
    BV: int | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked gated delta rule in two Triton launches (no grad).

    Args:
        q, k: [B, T, H, K] (unit stride on K, the same strides).  v: [B, T, HV, V] (unit stride
        on V).  g (log decay), beta: [B, T, HV] (the same strides).
        scale: multiplies q.  initial_state: [B, HV, K, V] float32 or None; never modified.
        use_qk_l2norm: L2-normalise q and k per head.  chunk_size (16, 32 or 64), BV, num_warps:
        tokens a chunk, the state kernel's block of V columns (None: ``step_triton.block_v``'s
        pick for 90% of the multiprocessors) and warps; the
        defaults are what ``benchmarks/gdn_chunk.py`` measured best, the others are for it.
    Returns:
        o: [B, T, HV, V] in the dtype of v.  final_state: [B, HV, K, V] float32.
    """
    check_shapes(q, k, v, g, beta)
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"gated_delta.chunk (Triton): chunk_size must be 16, 32 or 64, got {chunk_size}")
    B, T, HV, V = v.shape
    H, K = q.shape[-2], q.shape[-1]
    if initial_state is not None:
        check_state(initial_state, v, K, "initial_state")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if q.stride() != k.stride():
        q, k = q.contiguous(), k.contiguous()
    if g.stride() != beta.stride():
        g, beta = g.contiguous(), beta.contiguous()
    dt = v.dtype
    o = torch.empty_like(v, memory_format=torch.contiguous_format)
    S = torch.empty(B, HV, K, V, device=v.device, dtype=torch.float32)
    if T == 0:
        S.copy_(initial_state) if initial_state is not None else S.zero_()
        return o, S
    w = torch.empty(B, HV, T, K, device=v.device, dtype=dt)
    u = torch.empty(B, HV, T, V, device=v.device, dtype=dt)
    BK = max(16, triton.next_power_of_2(K))
    # Triton's CPU interpreter multiplies bf16 dot operands wrongly: float32 there (tests only)
    ieee = dt == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    strides = (*k.stride()[:3], *g.stride())
    wy_kernel[(triton.cdiv(T, chunk_size), B * HV)](
        k, v, g, beta, w, u, T, *strides[:3], *v.stride()[:3], *strides[3:], L2NORM_EPS,
        H=H, HV=HV, K=K, V=V, BK=BK, BVU=min(64, max(16, triton.next_power_of_2(V))), CHUNK=chunk_size,
        USE_QK_L2NORM=use_qk_l2norm, IEEE=ieee, num_warps=4, **pdl.launch(v),
    )  # fmt: skip
    # nearly every multiprocessor a program (a frame's 16 heads x 256 columns: 32, 128 programs
    # on 132), and at least 16 columns, tl.dot's least
    BV = BV or max(16, step_triton.block_v(B, HV, V, v.device, share=0.9))
    chunk_state_kernel[(B * HV, triton.cdiv(V, BV))](
        q, k, g, beta, w, u, initial_state if initial_state is not None else S, o, S, T,
        *strides, *o.stride()[:3], scale, L2NORM_EPS,
        H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, CHUNK=chunk_size, HAS_S0=initial_state is not None,
        USE_QK_L2NORM=use_qk_l2norm, IEEE=ieee, num_warps=num_warps, **pdl.launch(v),
    )  # fmt: skip
    return o, S
