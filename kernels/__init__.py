"""Kernels: one package per operation, a torch reference beside each fast path.

``kernels`` never imports ``engine``. Each package exposes launcher functions that pick the fast
path on CUDA (where it exists) and the reference everywhere else.
"""

import functools
import importlib.util
import os

import torch


@functools.cache
def has_triton() -> bool:
    """True when Triton can be imported (looked up once: every decode step dispatches on it)."""
    return importlib.util.find_spec("triton") is not None


def use_fast_path(
    x: torch.Tensor,
    use_kernel: bool | None,
    op: str,
    *,
    switch: str | None = None,
    grad_inputs: tuple[torch.Tensor, ...] = (),
    available: bool = True,
) -> bool:
    """Resolve a dispatcher's ``use_kernel`` for input ``x`` (the rule the Triton kernels share).

    True insists: a ``ValueError`` naming ``op`` where no kernel can run (CUDA, or CPU tensors
    under ``TRITON_INTERPRET=1``, with Triton installed). False refuses. None picks the kernel for
    CUDA tensors when Triton is installed, the environment variable ``switch`` is not ``"0"``, and
    no tensor of ``grad_inputs`` needs a gradient (the kernels have no backward). ``available``
    is the op's own need besides Triton (fla-core for the chunked gated delta rule).
    """
    if use_kernel:
        runnable = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        if not (runnable and has_triton() and available):
            own = "" if available else " and this op's own package (fla-core for gated_delta.chunk)"
            raise ValueError(
                f"{op}: no fast kernel for device {x.device.type!r}; use_kernel=True needs CUDA"
                f" with Triton{own}"
            )
        return True
    # CPU tensors leave here, before any environment lookup: every decode op asks
    if use_kernel is False or not x.is_cuda or not has_triton() or not available:
        return False
    if switch is not None and os.environ.get(switch) == "0":
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in grad_inputs))
