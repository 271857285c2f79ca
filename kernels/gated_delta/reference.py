"""Torch reference of the gated delta rule: token loop, single decode step and chunked (WY) form.

Per token and value head: ``S = exp(g) S; S += beta k (v - S^T k)^T; o = S^T (scale q)``.
All math runs in float32 whatever the input dtype; outputs come back in the dtype of ``v`` and
states are float32. ``recurrent`` and ``chunk`` are differentiable (no in-place op on a tensor
that may need grad); ``step`` updates its state in place and is for inference only.
The chunked derivation is in ``kernels/gated_delta/README.md``.
"""

import logging

import torch

log = logging.getLogger(__name__)

L2NORM_EPS = 1e-6  # inside the square root, as fla's l2norm


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes when q, k, v, g, beta do not fit one another.

    Args:
        q, k: [..., H, K].  v: [..., HV, V].  g, beta: [..., HV]; ``...`` is [B, T] or [B].
    """
    lead = v.shape[:-2]
    if q.dim() != v.dim() or q.shape != k.shape or q.shape[:-2] != lead:
        raise ValueError(f"gated_delta: q {tuple(q.shape)}, k {tuple(k.shape)} do not fit v {tuple(v.shape)}")
    if g.shape != v.shape[:-1] or beta.shape != v.shape[:-1]:
        raise ValueError(
            f"gated_delta: g {tuple(g.shape)} and beta {tuple(beta.shape)} must be {tuple(v.shape[:-1])} (v's [..., HV])"
        )
    H, HV = q.shape[-2], v.shape[-2]
    if HV % H != 0:
        raise ValueError(f"gated_delta: value heads HV={HV} must be a multiple of query/key heads H={H}")


def check_state(state: torch.Tensor, v: torch.Tensor, K: int, name: str = "state") -> None:
    """Raise ``ValueError`` unless ``state`` is a float32 [B, HV, K, V] matching ``v``."""
    B, HV, V = v.shape[0], v.shape[-2], v.shape[-1]
    if state.shape != (B, HV, K, V) or state.dtype != torch.float32:
        raise ValueError(
            f"gated_delta: {name} is {tuple(state.shape)} {state.dtype}, expected ({B}, {HV}, {K}, {V}) torch.float32"
        )


def prepare_qk(
    q: torch.Tensor, k: torch.Tensor, HV: int, scale: float, use_qk_l2norm: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upcast q, k to float32, optionally L2-normalise them, scale q and repeat heads to HV.

    Args:
        q, k: [..., H, K].
    Returns:
        q, k: [..., HV, K] float32; value head j reads q/k head j // (HV // H).
    """
    q, k = q.float(), k.float()
    if use_qk_l2norm:
        q = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + L2NORM_EPS)
        k = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + L2NORM_EPS)
    q = q * scale
    group = HV // q.shape[-2]
    if group > 1:
        q, k = q.repeat_interleave(group, dim=-2), k.repeat_interleave(group, dim=-2)
    return q, k


def _delta_update(
    S: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token out of place: S [B, HV, K, V]; q, k [B, HV, K]; v [B, HV, V]; g, beta [B, HV]."""
    S = S * g.exp()[..., None, None]
    kv = torch.einsum("bhk,bhkv->bhv", k, S)
    u = beta[..., None] * (v - kv)
    S = S + k[..., :, None] * u[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, S), S


def recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule token by token (the float32 ground truth).

    Args:
        q, k: [B, T, H, K].  v: [B, T, HV, V].  g (log decay, <= 0), beta: [B, T, HV].
        scale: multiplies q (after the optional L2 norm).
        initial_state: [B, HV, K, V] float32, or None for zeros; never modified.
        use_qk_l2norm: L2-normalise q and k per head first.
    Returns:
        o: [B, T, HV, V] in the dtype of v.  final_state: [B, HV, K, V] float32.
    """
    check_shapes(q, k, v, g, beta)
    B, T, HV, V = v.shape
    K = q.shape[-1]
    q, k = prepare_qk(q, k, HV, scale, use_qk_l2norm)
    vf, gf, bf = v.float(), g.float(), beta.float()
    if initial_state is None:
        S = q.new_zeros(B, HV, K, V)
    else:
        check_state(initial_state, v, K, "initial_state")
        S = initial_state
    outs = []
    for t in range(T):
        o_t, S = _delta_update(S, q[:, t], k[:, t], vf[:, t], gf[:, t], bf[:, t])
        outs.append(o_t)
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(B, 0, HV, V)
    return o.to(v.dtype), S


def gates(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated DeltaNet's gates from the raw projections (fla's layer, as the engine computes them).

    Args:
        a, b: [..., HV] the a_proj / b_proj outputs.  A_log, dt_bias: [HV].
    Returns:
        g: [..., HV] float32 = -exp(A_log) softplus(a + dt_bias) (log decay).
        beta: [..., HV] in the dtype of b = sigmoid(b).
    """
    g = -A_log.float().exp() * torch.nn.functional.softplus(a.float() + dt_bias)
    return g, b.sigmoid()


@torch.no_grad()
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
) -> torch.Tensor:
    """One decode step of the gated delta rule, updating ``state`` in place.

    Args:
        q, k: [B, H, K].  v: [B, HV, V].  g (log decay), beta: [B, HV].
        state: [B, HV, K, V] float32, updated in place.
        scale: multiplies q.  use_qk_l2norm: L2-normalise q and k per head first.
    Returns:
        o: [B, HV, V] in the dtype of v.
    """
    check_shapes(q, k, v, g, beta)
    check_state(state, v, q.shape[-1])
    q, k = prepare_qk(q, k, v.shape[-2], scale, use_qk_l2norm)
    # decay first, so the read below sees the same state as the formula's exp(g) S
    state.mul_(g.float().exp()[..., None, None])
    kv = torch.einsum("bhk,bhkv->bhv", k, state)
    u = beta.float()[..., None] * (v.float() - kv)
    state.add_(k[..., :, None] * u[..., None, :])
    return torch.einsum("bhk,bhkv->bhv", q, state).to(v.dtype)


def _chunk_local(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The parts of every chunk that do not depend on the incoming state (all chunks at once).

    Args:
        q, k: [B, HV, N, C, K].  v: [B, HV, N, C, V].  g, beta: [B, HV, N, C] float32.
    Returns:
        w [.., C, K], u [.., C, V] (so that the chunk's corrected values are u - w S0),
        q_decayed [.., C, K], attn [.., C, C] (decayed causal q k^T), k_tail [.., C, K]
        (keys decayed to the chunk end), decay_all [B, HV, N] (exp of the chunk's total log decay).
    """
    C = q.shape[-2]
    G = g.cumsum(-1)  # [B, HV, N, C]
    diff = G[..., :, None] - G[..., None, :]  # G_i - G_j
    idx = torch.arange(C, device=q.device)
    strict = idx[:, None] > idx[None, :]
    incl = idx[:, None] >= idx[None, :]
    # mask before exp: G_i - G_j > 0 above the diagonal and may overflow
    neg_inf = diff.new_tensor(float("-inf"))
    decay_strict = torch.where(strict, diff, neg_inf).exp()
    decay_incl = torch.where(incl, diff, neg_inf).exp()
    kk = k @ k.transpose(-1, -2)
    A = beta[..., :, None] * decay_strict * kk  # strictly lower
    eye = torch.eye(C, device=q.device, dtype=q.dtype)
    rhs = torch.cat([(beta * G.exp())[..., None] * k, beta[..., None] * v], dim=-1)
    sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    w, u = sol[..., : k.shape[-1]], sol[..., k.shape[-1] :]
    q_decayed = q * G.exp()[..., None]
    attn = (q @ k.transpose(-1, -2)) * decay_incl
    G_end = G[..., -1:]
    k_tail = k * (G_end - G).exp()[..., None]
    return w, u, q_decayed, attn, k_tail, G_end[..., 0].exp()


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
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule in chunks (WY / UT-transform form), for prefill.

    Args:
        q, k: [B, T, H, K].  v: [B, T, HV, V].  g (log decay, <= 0), beta: [B, T, HV].
        scale: multiplies q.  initial_state: [B, HV, K, V] float32 or None; never modified.
        use_qk_l2norm: L2-normalise q and k per head first.
        chunk_size: tokens per chunk; T need not be a multiple of it.
    Returns:
        o: [B, T, HV, V] in the dtype of v.  final_state: [B, HV, K, V] float32.
    """
    check_shapes(q, k, v, g, beta)
    if chunk_size < 1:
        raise ValueError(f"gated_delta.chunk: chunk_size must be >= 1, got {chunk_size}")
    B, T, HV, V = v.shape
    K = q.shape[-1]
    if initial_state is not None:
        check_state(initial_state, v, K, "initial_state")
    S = initial_state if initial_state is not None else v.new_zeros(B, HV, K, V, dtype=torch.float32)
    if T == 0:
        return v.new_zeros(B, 0, HV, V), S
    qf, kf = prepare_qk(q, k, HV, scale, use_qk_l2norm)
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    # [B, T, HV, *] -> [B, HV, N, C, *]; padded tokens have k = 0 and g = 0: they leave S untouched
    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        x = x.float().transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
        return x.reshape(B, HV, N, C, *x.shape[3:])

    w, u, q_decayed, attn, k_tail, decay_all = _chunk_local(*map(to_chunks, (qf, kf, v, g, beta)))
    outs = []
    for n in range(N):
        u_n = u[:, :, n] - w[:, :, n] @ S  # [B, HV, C, V] corrected values
        outs.append(q_decayed[:, :, n] @ S + attn[:, :, n] @ u_n)
        S = S * decay_all[:, :, n, None, None] + k_tail[:, :, n].transpose(-1, -2) @ u_n
    o = torch.stack(outs, dim=2).reshape(B, HV, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(v.dtype), S
