"""Torch reference of the rotary position embedding of q and k: ``x * cos + rotate_half(x) * sin``.

``rotate_qk`` is the decoder's (tables in the activations' dtype), ``rotate_vision_qkv`` the
vision tower's (float32 tables, as Qwen2.5-VL's vision attention rotates in float32).
"""

import torch


def check_inputs(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes unless q [B, H, T, D], k [B, Hkv, T, D] and cos,
    sin [B, T, D] fit one another (D even)."""
    ok = (
        q.dim() == k.dim() == 4
        and cos.shape == sin.shape
        and cos.dim() == 3
        and q.shape[0] == k.shape[0] == cos.shape[0]
        and q.shape[2] == k.shape[2] == cos.shape[1]
        and q.shape[3] == k.shape[3] == cos.shape[2]
        and q.shape[3] % 2 == 0
    )
    if not ok:
        raise ValueError(
            f"rope: q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}, sin "
            f"{tuple(sin.shape)} do not fit (q [B, H, T, D], k [B, Hkv, T, D], cos/sin [B, T, D],"
            " D even)"
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q``, ``k`` rotated by ``cos``/``sin`` (each op rounded to the inputs' dtype, as torch
    rounds). One token of one sequence is rotated as one [1, H + Hkv, 1, D] tensor (the same ops,
    half the kernels); q and k are then its contiguous slices."""
    check_inputs(q, k, cos, sin)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if q.shape[0] == 1 and q.shape[2] == 1 and q.dtype == k.dtype:
        qk = torch.cat([q, k], dim=1)
        qk = qk * cos + rotate_half(qk) * sin
        return qk[:, : q.shape[1]], qk[:, q.shape[1] :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def check_vision_inputs(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the shapes unless qkv [N, 3, H, D] and float32 cos, sin [N, D]
    fit one another (D even)."""
    ok = (
        qkv.dim() == 4
        and qkv.shape[1] == 3
        and cos.shape == sin.shape == (qkv.shape[0], qkv.shape[3])
        and cos.dtype == sin.dtype == torch.float32
        and qkv.shape[3] % 2 == 0
    )
    if not ok:
        raise ValueError(
            f"rope: qkv {tuple(qkv.shape)}, cos {tuple(cos.shape)} {cos.dtype}, sin "
            f"{tuple(sin.shape)} {sin.dtype} do not fit (qkv [N, 3, H, D], cos/sin [N, D] "
            "float32, D even)"
        )


def rotate_vision_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """q and k of ``qkv`` [N, 3, H, D] rotated by float32 ``cos``/``sin`` [N, D] (the float32
    tables promote them: each product and the sum in float32, rounded once to ``qkv``'s dtype),
    v copied: a new [N, 3, H, D] tensor."""
    check_vision_inputs(qkv, cos, sin)
    cos, sin = cos[:, None, None, :], sin[:, None, None, :]
    qk = qkv[:, :2]
    rotated = qkv.new_empty(qkv.shape)
    rotated[:, :2] = qk * cos + rotate_half(qk) * sin
    rotated[:, 2] = qkv[:, 2]
    return rotated
