"""RMS norms: the reference == the engine's modules' former torch math; Triton == reference.

``gpu`` tests run on CUDA, or on the CPU with ``TRITON_INTERPRET=1`` (whose float32 -> bf16 casts
truncate instead of rounding, hence a looser bf16 bound there).
"""

import pytest
import torch
import torch.nn.functional as F

from kernels import rms_norm
from kernels._testing import assert_close
from kernels.rms_norm import reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reference_is_the_qwen2_and_gated_norms(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x, gate = torch.randn(3, 5, 300).to(dtype), torch.randn(3, 5, 300).to(dtype)
    w = (torch.randn(300) * 0.1 + 1).to(dtype)
    x32 = x.float()
    qwen2 = w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    assert torch.equal(rms_norm.rms_norm(x, w, 1e-6), qwen2)
    o32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    gated = (o32 * w.float() * F.silu(gate.float())).to(dtype)
    assert torch.equal(rms_norm.gated_rms_norm(x, gate, w, 1e-5), gated)


def test_grad_calls_take_the_reference() -> None:
    x = torch.randn(2, 64, requires_grad=True)
    w = torch.ones(64, requires_grad=True)
    rms_norm.rms_norm(x, w, 1e-6).sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("N", [256, 300, 2048])
@pytest.mark.parametrize(
    ("dtype", "wdtype"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.bfloat16),
    ],
    ids=["fp32", "bf16", "bf16-fp32weight", "fp32-bf16weight"],
)
def test_triton_norms_match_reference(N: int, dtype: torch.dtype, wdtype: torch.dtype) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.rms_norm import norm_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(N)
    x = (torch.randn(7, N, generator=gen) * 3).to(dtype).to(device)
    w = (torch.randn(N, generator=gen) * 0.2 + 1).to(wdtype).to(device)
    exact = dtype == torch.float32 or device.type == "cuda"
    ratio = 1e-6 if dtype == torch.float32 else 1e-2 if exact else 2e-2
    want = reference.rms_norm(x, w, 1e-6)
    poison_allocator(device)
    got = norm_triton.rms_norm(x, w, 1e-6)
    assert got.dtype == want.dtype
    assert_close("rms_norm", want, got, ratio)
    # a [B, T, N] view with rows further apart than N (the decode step's strided projections)
    wide = torch.randn(2, 3, N + 40, generator=gen).to(dtype).to(device)
    xs, gs = wide[..., :N], wide[..., 40:]
    w2 = w.to(dtype)
    want_g = reference.gated_rms_norm(xs, gs, w2, 1e-5)
    poison_allocator(device)
    got_g = norm_triton.gated_rms_norm(xs, gs, w2, 1e-5)
    assert got_g.dtype == dtype and got_g.shape == xs.shape
    assert_close("gated_rms_norm", want_g, got_g, ratio)


def test_add_rms_norm_reference_is_the_add_then_the_norm() -> None:
    torch.manual_seed(1)
    x, h = torch.randn(2, 3, 64).bfloat16(), torch.randn(2, 3, 64).bfloat16()
    w = (torch.randn(64) * 0.1 + 1).bfloat16()
    s, y = rms_norm.add_rms_norm(x, h, w, 1e-6)
    assert torch.equal(s, x + h)
    assert torch.equal(y, rms_norm.rms_norm(x + h, w, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("N", [300, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [5, 1030], ids=["decode", "prompt"])
def test_triton_add_rms_norm_matches_reference(N: int, dtype: torch.dtype, rows: int) -> None:
    """A decode step's few rows (a program each) and a prompt's (blocks of rows, the last one
    partial)."""
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.rms_norm import norm_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(N + 1)
    x = (torch.randn(rows, N, generator=gen) * 3).to(dtype).to(device)
    h = torch.randn(rows, N, generator=gen).to(dtype).to(device)
    w = (torch.randn(N, generator=gen) * 0.2 + 1).to(dtype).to(device)
    s_ref, y_ref = reference.add_rms_norm(x, h, w, 1e-6)
    poison_allocator(device)
    s, y = norm_triton.add_rms_norm(x, h, w, 1e-6)
    exact = dtype == torch.float32 or device.type == "cuda"
    if exact:
        assert torch.equal(s, s_ref)  # one rounding of the same float32 sum
    assert_close("s", s_ref, s, 1e-6 if dtype == torch.float32 else 1e-2)
    assert_close("y", y_ref, y, 1e-6 if dtype == torch.float32 else 1e-2 if exact else 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_norms_of_a_prompt_match_reference(dtype: torch.dtype) -> None:
    """A prompt's rows share programs (blocks of rows, the last one partial): Gated DeltaNet's
    gated norm of one 128-wide row per head and token, its gate a slice of the projections, and
    Qwen2's norm of 2,048-wide rows (the residual add + norm: the test above)."""
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator
    from kernels.rms_norm import norm_triton

    device = device_for_kernel_tests()
    gen = torch.Generator().manual_seed(3)
    T, H, D = 131, 8, 128  # 1,048 rows: 32 blocks of 32 and a partial one
    o = (torch.randn(1, T, H, D, generator=gen) * 3).to(dtype).to(device)
    proj = torch.randn(1, T, H * D + 64, generator=gen).to(dtype).to(device)
    gate = proj[..., 64:].view(1, T, H, D)  # rows H * D + 64 apart between tokens
    w = (torch.randn(D, generator=gen) * 0.2 + 1).to(dtype).to(device)
    exact = dtype == torch.float32 or device.type == "cuda"
    ratio = 1e-6 if dtype == torch.float32 else 1e-2 if exact else 2e-2
    want = reference.gated_rms_norm(o, gate, w, 1e-6)
    poison_allocator(device)
    got = norm_triton.gated_rms_norm(o, gate, w, 1e-6)
    assert_close("gated_rms_norm", want, got, ratio)
    x = (torch.randn(1030, 2048, generator=gen) * 3).to(dtype).to(device)
    w2 = (torch.randn(2048, generator=gen) * 0.2 + 1).to(dtype).to(device)
    want_n = reference.rms_norm(x, w2, 1e-6)
    poison_allocator(device)
    assert_close("rms_norm", want_n, norm_triton.rms_norm(x, w2, 1e-6), ratio)
