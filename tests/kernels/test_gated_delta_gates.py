"""``gated_delta.step_gates``: the decode step from the raw a / b projections; ``gated_delta.gates``
for a prompt.

The reference path == the engine's separate gate ops + ``reference.step``; the Triton kernel
(gates computed inside it) == the reference, including softplus past its threshold (a + dt_bias
over 20). ``gpu`` tests run on CUDA, or on the CPU with ``TRITON_INTERPRET=1``.
"""

import pytest
import torch
import torch.nn.functional as F

from kernels import gated_delta
from kernels._testing import assert_close
from kernels.gated_delta import reference

B, H, HV, K, V = 2, 2, 4, 16, 32


def _inputs(dtype: torch.dtype, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    a = rnd(B, HV, scale=4.0)
    a[0, 0] = 30.0  # softplus's linear branch
    return {
        "q": rnd(B, H, K), "k": rnd(B, H, K), "v": rnd(B, HV, V), "a": a, "b": rnd(B, HV),
        "A_log": torch.rand(HV, generator=gen).mul(3).to(device),  # float32, as the model keeps it
        "dt_bias": rnd(HV),
        "state": torch.randn(B, HV, K, V, generator=gen).to(device),
    }  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reference_is_the_engines_gates_then_step(dtype: torch.dtype) -> None:
    x = _inputs(dtype)
    state = x["state"].clone()
    o = gated_delta.step_gates(
        x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], state,
        scale=K**-0.5, use_qk_l2norm=True, use_kernel=False,
    )  # fmt: skip
    # the engine's separate ops (engine/model/gated_deltanet.py)
    g = -x["A_log"].float().exp() * F.softplus(x["a"].float() + x["dt_bias"])
    beta = x["b"].sigmoid()
    want_state = x["state"].clone()
    want = reference.step(
        x["q"], x["k"], x["v"], g, beta, want_state, scale=K**-0.5, use_qk_l2norm=True
    )
    assert torch.equal(o, want)
    assert torch.equal(state, want_state)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_step_gates_matches_reference(dtype: torch.dtype) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator

    device = device_for_kernel_tests()
    x = _inputs(dtype, device, seed=1)
    state_ref, state = x["state"].clone(), x["state"].clone()
    for t in range(5):  # five steps over the same state
        y = _inputs(dtype, device, seed=10 + t)
        args = (y["q"], y["k"], y["v"], y["a"], y["b"], x["A_log"], x["dt_bias"])
        want = gated_delta.step_gates(
            *args, state_ref, scale=K**-0.5, use_qk_l2norm=True, use_kernel=False
        )
        poison_allocator(device)
        got = gated_delta.step_gates(
            *args, state, scale=K**-0.5, use_qk_l2norm=True, use_kernel=True
        )
        ratio = 1e-5 if dtype == torch.float32 else 1e-2
        assert_close(f"o at step {t}", want, got, ratio)
        # beta is rounded to b's dtype as in the layer; Triton's interpreter casts float32 to
        # bf16 by truncation (CUDA rounds to nearest), which moves the state by ~5e-3 here
        exact = dtype == torch.float32 or device.type == "cuda"
        assert_close(f"state at step {t}", state_ref, state, 1e-5 if exact else 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("HV_", [4, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_prompt_gates_match_reference(dtype: torch.dtype, HV_: int) -> None:
    """``gated_delta.gates`` for a prompt: one launch == the engine's torch ops."""
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(HV_)
    T = 70
    # a and b as a prompt hands them: column blocks of one projection output
    proj = (torch.randn(B, T, 2 * HV_ + 7, generator=gen) * 4).to(dtype).to(device)
    proj[0, 3, 0] = 30.0  # softplus's linear branch
    a, b = proj[..., :HV_], proj[..., HV_ : 2 * HV_]
    A_log = torch.rand(HV_, generator=gen).mul(3).to(device)
    dt_bias = torch.randn(HV_, generator=gen).to(dtype).to(device)
    g_ref, beta_ref = gated_delta.gates(a, b, A_log, dt_bias, use_kernel=False)
    poison_allocator(device)
    g, beta = gated_delta.gates(a, b, A_log, dt_bias, use_kernel=True)
    assert g.dtype == torch.float32 and beta.dtype == dtype
    assert_close("g", g_ref, g, 1e-5)
    assert_close("beta", beta_ref.float(), beta.float(), 1e-5 if dtype == torch.float32 else 1e-2)
