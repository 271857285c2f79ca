"""Torch reference of sliding-window attention over a fixed-size ring buffer of keys and values.

A query at token index ``i`` sees token indices ``i - W + 1 ... i`` (itself included). Token ``p``
lives in ring slot ``p % W``; keys enter the ring after RoPE, so slot order never matters.
``seen`` counts the tokens written before the call. Math runs in float32; outputs come back in
the dtype of ``q``. ``prefill`` is differentiable w.r.t. q, k, v; ``write`` and ``step`` mutate
the ring and are for inference only.
"""

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

QUERY_BLOCK = 512  # queries per block in prefill: the banded scores stay [B, H, 512, 512 + W]


def check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor, seen: int
) -> None:
    """Raise ``ValueError`` naming the shapes when q, k, v and the ring do not fit one another.

    Args:
        q: [B, H, T, D] or [B, H, D].  k, v: [B, Hkv, T, D] or [B, Hkv, D].  ring_k, ring_v: [B, Hkv, W, D].
    """
    if k.shape != v.shape or ring_k.shape != ring_v.shape or ring_k.dim() != 4:
        raise ValueError(
            f"swa: k {tuple(k.shape)} / v {tuple(v.shape)} or ring_k {tuple(ring_k.shape)} / ring_v {tuple(ring_v.shape)} differ"
        )
    B, Hkv, _, D = ring_k.shape
    if k.shape[:2] != (B, Hkv) or k.shape[-1] != D or q.shape[0] != B or q.shape[-1] != D or q.dim() != k.dim():
        raise ValueError(
            f"swa: q {tuple(q.shape)}, k {tuple(k.shape)} do not fit ring {tuple(ring_k.shape)} [B, Hkv, W, D]"
        )
    if q.dim() == 4 and q.shape[2] != k.shape[2]:
        raise ValueError(f"swa: q has T={q.shape[2]} tokens, k has T={k.shape[2]}")
    if q.shape[1] % Hkv != 0:
        raise ValueError(f"swa: query heads H={q.shape[1]} must be a multiple of key/value heads Hkv={Hkv}")
    if seen < 0:
        raise ValueError(f"swa: seen must be >= 0, got {seen}")


def ring_pieces(ring: torch.Tensor, seen: int) -> list[torch.Tensor]:
    """The ring's valid entries in token order as views, no copy: one slice while the ring has not
    wrapped (or is full at a multiple of W), two once it has (the older tokens from slot
    ``seen % W`` on, then the newer from slot 0); none before any token. Concatenated:
    [B, Hkv, min(seen, W), D] for tokens max(0, seen - W) .. seen - 1."""
    W = ring.shape[2]
    if seen <= W:
        return [ring[:, :, :seen]] if seen else []
    start = seen % W
    return [ring[:, :, start:], ring[:, :, :start]] if start else [ring]


def ring_then(ring: torch.Tensor, new: torch.Tensor, seen: int, dtype: torch.dtype) -> torch.Tensor:
    """The ring's valid entries in token order followed by ``new`` [B, Hkv, T, D], in ``dtype``,
    made in one copy: [B, Hkv, min(seen, W) + T, D] (the keys or values a prefill attends to)."""
    return torch.cat([*(p.to(dtype) for p in ring_pieces(ring, seen)), new.to(dtype)], dim=2)


def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int,
    *,
    scale: float,
) -> torch.Tensor:
    """Attention of T new queries over the ring's valid entries and the new keys (banded causal).

    Args:
        q: [B, H, T, D].  k, v: [B, Hkv, T, D]; H % Hkv == 0.
        ring_k, ring_v: [B, Hkv, W, D], holding the tokens before this call; not modified.
        seen: tokens written before this call.  scale: multiplies q k^T.
    Returns:
        o: [B, H, T, D] in the dtype of q.
    """
    check_inputs(q, k, v, ring_k, ring_v, seen)
    keys = ring_then(ring_k, k, seen, torch.float32)
    values = ring_then(ring_v, v, seen, torch.float32)
    return banded_attention(q.float(), keys, values, seen, ring_k.shape[2], scale, QUERY_BLOCK).to(q.dtype)


def banded_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, seen: int, W: int, scale: float, query_block: int
) -> torch.Tensor:
    """Banded causal attention, one block of queries at a time, in the dtype of the inputs.

    Args:
        q: [B, H, T, D] for token indices seen ... seen + T - 1.
        keys, values: [B, Hkv, L, D] for token indices seen + T - L ... seen + T - 1 (ring, then new).
        W: the window.  query_block: queries per block (the scores stay [B, H, block, block + W]).
    Returns:
        o: [B, H, T, D].
    """
    T, L = q.shape[2], keys.shape[2]
    first = seen + T - L
    outs = []
    for start in range(0, T, query_block):
        stop = min(start + query_block, T)
        # the block's queries see token indices seen + start - W + 1 ... seen + stop - 1
        lo = max(seen + start - W + 1, first) - first
        hi = seen + stop - first
        pos_q = torch.arange(seen + start, seen + stop, device=q.device)[:, None]
        pos_k = torch.arange(first + lo, first + hi, device=q.device)[None, :]
        mask = (pos_k <= pos_q) & (pos_k > pos_q - W)  # [Tb, Lb]
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:stop],
                keys[:, :, lo:hi],
                values[:, :, lo:hi],
                attn_mask=mask,
                scale=scale,
                enable_gqa=True,
            )
        )
    return torch.cat(outs, dim=2)


@torch.no_grad()
def write(ring_k: torch.Tensor, ring_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: int) -> None:
    """Write the last min(T, W) new keys and values into their slots (token index % W), in place.

    Args:
        ring_k, ring_v: [B, Hkv, W, D], modified.  k, v: [B, Hkv, T, D].  seen: tokens before these.
    """
    check_inputs(k, k, v, ring_k, ring_v, seen)
    T, W = k.shape[2], ring_k.shape[2]
    n = min(T, W)
    slots = torch.arange(seen + T - n, seen + T, device=ring_k.device) % W
    ring_k.index_copy_(2, slots, k[:, :, T - n :].to(ring_k.dtype))
    ring_v.index_copy_(2, slots, v[:, :, T - n :].to(ring_v.dtype))


@torch.no_grad()
def step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    seen: int,
    *,
    scale: float,
    pads: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode token: write k, v at slot seen % W, then attend over min(seen + 1, W) entries.

    Args:
        q: [B, H, D].  k, v: [B, Hkv, D].  ring_k, ring_v: [B, Hkv, W, D], modified.
        seen: tokens before this one.  scale: multiplies q k^T.
        pads: None, or [B] int64: tokens before index ``pads[b]`` of row ``b`` are padding, left
            out of its attention (at most ``seen``: the new token is never padding).
    Returns:
        o: [B, H, D] in the dtype of q.
    """
    check_inputs(q, k, v, ring_k, ring_v, seen)
    B, H, D = q.shape
    Hkv, W = ring_k.shape[1], ring_k.shape[2]
    slot = seen % W
    ring_k[:, :, slot] = k.to(ring_k.dtype)
    ring_v[:, :, slot] = v.to(ring_v.dtype)
    n = min(seen + 1, W)
    keys, values = ring_k[:, :, :n].float(), ring_v[:, :, :n].float()  # [B, Hkv, n, D]
    qg = q.float().view(B, Hkv, H // Hkv, D)
    scores = qg @ keys.transpose(-1, -2) * scale  # [B, Hkv, G, n]
    if pads is not None:
        # slot s holds token seen - ((seen - s) mod W), the one of the window that lands there
        slots = torch.arange(n, device=q.device)
        token = seen - torch.remainder(seen - slots, W)
        padding = token[None, :] < pads.to(q.device)[:, None]  # [B, n]
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p @ values).reshape(B, H, D).to(q.dtype)
