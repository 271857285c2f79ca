"""Gated delta rule (Gated DeltaNet's recurrence): dispatchers that pick a fast path or the reference.

``chunk`` is for prompts (prefill), ``step`` for one decode token, ``recurrent`` the token loop.
Shapes and semantics are those of ``kernels.gated_delta.reference`` (docs/INTERFACES.md). On CUDA,
``chunk`` runs flash-linear-attention's Triton kernel (``chunk_fla``) and ``step`` the project's
own Triton kernel (``step_triton``); both are imported on first use, so CPU installs need neither.
"""

import functools
import logging
import os

import torch

from kernels import use_fast_path
from kernels.gated_delta import chunk_fla, reference

log = logging.getLogger(__name__)

__all__ = ["SHORT_PROMPT", "chunk", "gates", "recurrent", "reference", "step", "step_gates"]

SHORT_PROMPT = 512  # tokens: chunk_triton up to here, fla beyond (python -m benchmarks.gdn_chunk)
SHORT_SWITCH = "INFINITEVL_CHUNK_KERNEL"  # "0": fla for short prompts too


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("%s", message)


def gates(
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated DeltaNet's gates from its raw projections, for a prompt (``reference.gates``).

    On CUDA without grad one Triton launch (``gates_triton``) where torch takes seven;
    ``INFINITEVL_GATES_KERNEL=0`` keeps torch.

    Args:
        a, b: [..., HV] the a_proj / b_proj outputs.  A_log, dt_bias: [HV].
        use_kernel: True forces the kernel, False the reference, None picks by device and grad.
    Returns:
        g: [..., HV] float32 = -exp(A_log) softplus(a + dt_bias).  beta: [..., HV] = sigmoid(b).
    """
    grads = (a, b, A_log, dt_bias)
    if use_fast_path(a, use_kernel, "gated_delta.gates", switch="INFINITEVL_GATES_KERNEL", grad_inputs=grads):
        from kernels.gated_delta import gates_triton

        return gates_triton.gates(a, b, A_log, dt_bias)
    return reference.gates(a, b, A_log, dt_bias)


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
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule for prefill.

    On CUDA without grad, prompts of up to ``SHORT_PROMPT`` tokens (a frame, a chat turn) run the
    project's two Triton launches (``chunk_triton``; ``INFINITEVL_CHUNK_KERNEL=0`` sends them to
    fla), longer ones and grad calls fla's kernel (``chunk_fla``) where it runs, the reference
    elsewhere. ``use_kernel=True`` insists on one of the two (``chunk_triton`` also under
    ``TRITON_INTERPRET=1``).

    Args:
        q, k: [B, T, H, K].  v: [B, T, HV, V].  g (log decay), beta: [B, T, HV]; HV % H == 0.
        scale: multiplies q.  initial_state: [B, HV, K, V] float32 or None; never modified.
        use_qk_l2norm: L2-normalise q and k per head.  chunk_size: tokens per chunk of fla and
        the reference (``chunk_triton`` takes its own, ``CHUNK``).
        use_kernel: True forces the fast path, False the reference, None picks by device.
    Returns:
        o: [B, T, HV, V] in the dtype of v.  final_state: [B, HV, K, V] float32.
    """
    T = q.shape[1]
    leaves = (q, k, v, g, beta, initial_state)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in leaves)
    short = 0 < T <= SHORT_PROMPT and not needs_grad
    if short and use_fast_path(q, use_kernel, "gated_delta.chunk", switch=SHORT_SWITCH):
        from kernels.gated_delta import chunk_triton

        return chunk_triton.chunk(
            q, k, v, g, beta, scale=scale, initial_state=initial_state, use_qk_l2norm=use_qk_l2norm
        )
    fla = chunk_fla.is_available() and q.is_cuda
    if use_fast_path(q, use_kernel, "gated_delta.chunk", available=fla) and T > 0:
        if needs_grad and not chunk_fla.backward_is_safe(q.device):
            # fla's forward would succeed and its backward raise: train through the reference
            _warn_once("gated_delta.chunk: fla's backward is unsafe on this GPU/Triton: the reference takes grad calls")
        elif chunk_size in chunk_fla.FLA_CHUNK_SIZES:
            return chunk_fla.chunk(
                q,
                k,
                v,
                g,
                beta,
                scale=scale,
                initial_state=initial_state,
                use_qk_l2norm=use_qk_l2norm,
                chunk_size=chunk_size,
            )
        else:
            _warn_once(f"gated_delta.chunk: chunk_size {chunk_size} is not one of fla's {chunk_fla.FLA_CHUNK_SIZES}")
    return reference.chunk(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, use_qk_l2norm=use_qk_l2norm, chunk_size=chunk_size
    )


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
    use_kernel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token gated delta rule; same arguments and results as ``chunk``."""
    if use_kernel:
        raise ValueError(
            "gated_delta.recurrent: has no fast kernel (it is the float32 ground truth); use chunk or step"
        )
    return reference.recurrent(q, k, v, g, beta, scale=scale, initial_state=initial_state, use_qk_l2norm=use_qk_l2norm)


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
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """One decode step of the gated delta rule.

    Args:
        q, k: [B, H, K].  v: [B, HV, V].  g (log decay), beta: [B, HV].
        state: [B, HV, K, V] float32, updated in place.
        scale: multiplies q.  use_qk_l2norm: L2-normalise q and k per head.
        use_kernel: True forces the fast path, False the reference, None picks by device.
    Returns:
        o: [B, HV, V] in the dtype of v.
    """
    if use_fast_path(q, use_kernel, "gated_delta.step"):
        from kernels.gated_delta import step_triton

        return step_triton.step(q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm)
    return reference.step(q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm)


def step_gates(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    *,
    scale: float,
    use_qk_l2norm: bool = False,
    use_kernel: bool | None = None,
) -> torch.Tensor:
    """``step`` from Gated DeltaNet's raw gate projections: ``g, beta = reference.gates(...)``.

    On CUDA the Triton kernel computes the gates itself (no separate launches for them);
    ``INFINITEVL_GATES_KERNEL=0`` computes them in torch and hands them to ``step`` instead.

    Args:
        q, k: [B, H, K].  v: [B, HV, V].  a, b: [B, HV] the a_proj / b_proj outputs.
        A_log, dt_bias: [HV].  state: [B, HV, K, V] float32, updated in place.
        scale, use_qk_l2norm, use_kernel: as for ``step``.
    Returns:
        o: [B, HV, V] in the dtype of v.
    """
    if use_kernel is None and os.environ.get("INFINITEVL_GATES_KERNEL") == "0":
        g, beta = reference.gates(a, b, A_log, dt_bias)
        return step(q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm)
    if use_fast_path(q, use_kernel, "gated_delta.step"):
        from kernels.gated_delta import step_triton

        return step_triton.step(
            q, k, v, a, b, state, scale=scale, use_qk_l2norm=use_qk_l2norm,
            A_log=A_log.detach().contiguous(), dt_bias=dt_bias.detach().contiguous(),
        )  # fmt: skip
    g, beta = reference.gates(a, b, A_log, dt_bias)
    return reference.step(q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm)
