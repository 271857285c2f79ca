"""Rotary position embedding: the decoder's q and k (M-RoPE) and the vision tower's q and k
(2-D RoPE), each one Triton launch on CUDA, torch elsewhere.

``rotate_qk`` (decoder) and ``rotate_vision_qkv`` (vision) take their Triton kernels
(``rope_triton``, imported on first use) for CUDA tensors without autograd, where torch's ops take
six and seven launches a layer. Both kernels round as torch's ops round, so on CUDA their results
equal ``reference``'s bit for bit (tests/kernels/test_rope.py). ``INFINITEVL_ROPE_KERNEL=0``
keeps the reference everywhere (for comparisons); ``use_kernel=True`` forces the kernel (tests,
CPU tensors under ``TRITON_INTERPRET=1``).
"""

import torch

from kernels import use_fast_path
from kernels.rope import reference

__all__ = ["reference", "rotate_qk", "rotate_vision_qkv"]

SWITCH = "INFINITEVL_ROPE_KERNEL"  # "0": the torch reference everywhere


def rotate_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q * cos + rotate_half(q) * sin`` and the same for ``k``.

    Args:
        q: [B, H, T, D].  k: [B, Hkv, T, D].  cos, sin: [B, T, D] (``rope.mrope_cos_sin``).
        use_kernel: True forces the Triton kernel, False the reference, None picks (above).
    Returns:
        rotated q and k, in their shapes and dtype (the kernel's: slices of one
        [B, H + Hkv, T, D] tensor).
    """
    picked = use_fast_path(q, use_kernel, "rope", switch=SWITCH, grad_inputs=(q, k, cos, sin))
    # the dtype and stride checks only where the kernel may run (CPU calls stop at ``picked``)
    if picked and (
        use_kernel
        or (
            q.dtype == k.dtype == cos.dtype == sin.dtype
            and all(x.stride(-1) == 1 for x in (q, k, cos, sin))
        )
    ):
        from kernels.rope import rope_triton

        return rope_triton.rotate_qk(q, k, cos, sin)
    return reference.rotate_qk(q, k, cos, sin)


def rotate_vision_qkv(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """The vision attention's q and k rotated by float32 tables, v copied beside them.

    Args:
        qkv: [N, 3, H, D], the ``qkv`` projection of N patches.  cos, sin: [N, D] float32.
        use_kernel: True forces the Triton kernel, False the reference, None picks (above).
    Returns:
        [N, 3, H, D] in the dtype of ``qkv``: q and k rotated in float32 and rounded once, v as
        given (``reference.rotate_vision_qkv``).
    """
    picked = use_fast_path(qkv, use_kernel, "rope", switch=SWITCH, grad_inputs=(qkv, cos, sin))
    if picked and (use_kernel or qkv.stride(-1) == 1):
        from kernels.rope import rope_triton

        return rope_triton.rotate_vision_qkv(qkv, cos, sin)
    return reference.rotate_vision_qkv(qkv, cos, sin)
