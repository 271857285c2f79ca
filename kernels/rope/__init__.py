"""Rotary position embedding of the decoder's q and k: Triton for a decode token on CUDA, torch
elsewhere.

``rotate_qk`` takes the Triton kernel (``rope_triton``, imported on first use) for one token of
one sequence on CUDA without autograd when ``INFINITEVL_ROPE_KERNEL=1``: one launch a layer
where torch's ops take six. It is opt-in until a GPU run passes with it on: the first one (commit
``23f3134``, docs/gpu-session.md) failed tests, among them float32 exactness (the GPU fused a
multiply-add the reference rounds twice; compiled without fusion since, not yet run on a GPU),
and ended before the other failures could be read.
Prompts and everything else take ``reference``; ``use_kernel=True`` forces the kernel for any
shape (tests).
"""

import os

import torch

from kernels import use_fast_path
from kernels.rope import reference

__all__ = ["reference", "rotate_qk"]

SWITCH = "INFINITEVL_ROPE_KERNEL"  # "1": the kernel for a decode token on CUDA


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
        use_kernel: True forces the Triton kernel, False the reference, None picks (above:
            the reference unless ``INFINITEVL_ROPE_KERNEL=1``).
    Returns:
        rotated q and k, in their shapes and dtype.
    """
    if use_kernel is None and os.environ.get(SWITCH) != "1":
        use_kernel = False  # opt-in (above)
    picked = use_fast_path(q, use_kernel, "rope", grad_inputs=(q, k, cos, sin))
    one_token = q.shape[0] == 1 and q.dim() == 4 and q.shape[2] == 1
    same_dtype = q.dtype == k.dtype == cos.dtype == sin.dtype
    unit = all(x.stride(-1) == 1 for x in (q, k, cos, sin))
    if picked and (use_kernel or (one_token and same_dtype and unit)):
        from kernels.rope import rope_triton

        return rope_triton.rotate_qk(q, k, cos, sin)
    return reference.rotate_qk(q, k, cos, sin)
