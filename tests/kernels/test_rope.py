"""Rotary embedding of q and k: the Triton kernel == the torch reference, bit for bit on CUDA."""

import pytest
import torch

from kernels import rope
from kernels._testing import assert_close


def _inputs(B: int, H: int, Hkv: int, T: int, D: int, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator().manual_seed(B * 1000 + T * 10 + D)
    # q, k, v as the decode step hands them: strided views of one projection [B, T, (H+2Hkv)*D]
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, generator=gen).to(device, dtype)
    q = qkv[..., : H * D].view(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D : (H + Hkv) * D].view(B, T, Hkv, D).transpose(1, 2)
    angle = torch.rand(B, T, D, generator=gen) * 6.3
    return q, k, angle.cos().to(device, dtype), angle.sin().to(device, dtype)


def test_reference_rotates_each_pair_and_names_bad_shapes() -> None:
    q, k, cos, sin = _inputs(1, 2, 1, 3, 4, torch.float32, torch.device("cpu"))
    rq, rk = rope.rotate_qk(q, k, cos, sin)
    # [x1, x2] -> [x1 cos1 - x2 sin1, x2 cos2 + x1 sin2] (M-RoPE's tables repeat: cos1 == cos2)
    x1, x2 = q[..., :2], q[..., 2:]
    c, s = cos[:, None], sin[:, None]
    want = torch.cat([x1 * c[..., :2] - x2 * s[..., :2], x2 * c[..., 2:] + x1 * s[..., 2:]], -1)
    torch.testing.assert_close(rq, want)
    assert rk.shape == k.shape
    with pytest.raises(ValueError, match=r"rope: q \(1, 2, 3, 4\), k \(1, 1, 2, 4\)"):
        rope.rotate_qk(q, k[:, :, :2], cos, sin)
    with pytest.raises(ValueError, match="use_kernel=True needs CUDA"):
        rope.rotate_qk(q, k, cos, sin, use_kernel=True)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("B", "H", "Hkv", "T", "D"),
    [(1, 16, 2, 1, 128), (1, 3, 1, 1, 6), (2, 4, 2, 7, 64), (1, 16, 2, 37, 128)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_rope_matches_reference(
    B: int, H: int, Hkv: int, T: int, D: int, dtype: torch.dtype
) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator

    device = device_for_kernel_tests()
    q, k, cos, sin = _inputs(B, H, Hkv, T, D, dtype, device)
    want_q, want_k = rope.reference.rotate_qk(q, k, cos, sin)
    poison_allocator(device)
    got_q, got_k = rope.rotate_qk(q, k, cos, sin, use_kernel=True)
    assert got_q.shape == q.shape and got_k.shape == k.shape and got_q.dtype == dtype
    if device.type == "cuda":  # each op rounded as torch rounds it, no fused multiply-add
        assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    else:  # the interpreter's casts truncate
        assert_close("q", want_q, got_q, 1e-2)
        assert_close("k", want_k, got_k, 1e-2)


def test_the_kernel_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    # without INFINITEVL_ROPE_KERNEL=1 a decode token takes the reference, on any device
    monkeypatch.delenv("INFINITEVL_ROPE_KERNEL", raising=False)
    q, k, cos, sin = _inputs(1, 4, 2, 1, 8, torch.float32, torch.device("cpu"))
    got_q, got_k = rope.rotate_qk(q, k, cos, sin)
    want_q, want_k = rope.reference.rotate_qk(q, k, cos, sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


@pytest.mark.gpu
def test_a_decode_token_on_cuda_takes_the_kernel_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setenv("INFINITEVL_ROPE_KERNEL", "1")
    q, k, cos, sin = _inputs(1, 16, 2, 1, 128, torch.bfloat16, torch.device("cuda"))
    got_q, got_k = rope.rotate_qk(q, k, cos, sin)
    # the kernel's output is one [1, H + Hkv, 1, D] tensor; q and k are its slices
    assert got_k.data_ptr() == got_q.data_ptr() + 16 * 128 * 2
    want_q, want_k = rope.reference.rotate_qk(q, k, cos, sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
