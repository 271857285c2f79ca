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


def test_cpu_tensors_take_the_reference() -> None:
    q, k, cos, sin = _inputs(1, 4, 2, 1, 8, torch.float32, torch.device("cpu"))
    got_q, got_k = rope.rotate_qk(q, k, cos, sin)
    want_q, want_k = rope.reference.rotate_qk(q, k, cos, sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


@pytest.mark.gpu
@pytest.mark.parametrize("switch", ["unset", "0"])
def test_cuda_takes_the_kernels_unless_switched_off(
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    from kernels.rope import rope_triton

    if switch == "unset":
        monkeypatch.delenv("INFINITEVL_ROPE_KERNEL", raising=False)
    else:
        monkeypatch.setenv("INFINITEVL_ROPE_KERNEL", switch)
    launched: list[str] = []
    for name in ("rotate_qk", "rotate_vision_qkv"):
        kernel = getattr(rope_triton, name)
        monkeypatch.setattr(
            rope_triton, name, lambda *a, _k=kernel, _n=name: launched.append(_n) or _k(*a)
        )
    q, k, cos, sin = _inputs(1, 16, 2, 1, 128, torch.bfloat16, torch.device("cuda"))
    got_q, got_k = rope.rotate_qk(q, k, cos, sin)
    want_q, want_k = rope.reference.rotate_qk(q, k, cos, sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    qkv, vcos, vsin = _vision_inputs(64, 16, 80, torch.bfloat16, torch.device("cuda"))
    got = rope.rotate_vision_qkv(qkv, vcos, vsin)
    assert torch.equal(got, rope.reference.rotate_vision_qkv(qkv, vcos, vsin))
    assert launched == (["rotate_qk", "rotate_vision_qkv"] if switch == "unset" else [])


def _vision_inputs(N: int, H: int, D: int, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator().manual_seed(N * 10 + D)
    # as the vision attention hands it: the qkv projection [N, 3 * H * D] viewed [N, 3, H, D]
    qkv = torch.randn(N, 3 * H * D, generator=gen).to(device, dtype).view(N, 3, H, D)
    angle = torch.rand(N, D, generator=gen) * 40.0
    return qkv, angle.cos().to(device), angle.sin().to(device)


def test_vision_reference_rotates_in_float32_and_copies_v() -> None:
    qkv, cos, sin = _vision_inputs(5, 2, 6, torch.bfloat16, torch.device("cpu"))
    got = rope.rotate_vision_qkv(qkv, cos, sin)
    x = qkv.float()
    x1, x2 = x[:, :2, :, :3], x[:, :2, :, 3:]
    c, s = cos[:, None, None], sin[:, None, None]
    want = torch.cat([x1 * c[..., :3] - x2 * s[..., :3], x2 * c[..., 3:] + x1 * s[..., 3:]], -1)
    assert got.dtype == torch.bfloat16 and got.shape == qkv.shape
    torch.testing.assert_close(got[:, :2], want.bfloat16(), rtol=0, atol=0)
    assert torch.equal(got[:, 2], qkv[:, 2])
    with pytest.raises(ValueError, match=r"rope: qkv \(5, 3, 2, 6\), cos \(5, 6\) torch.bfloat16"):
        rope.rotate_vision_qkv(qkv, cos.bfloat16(), sin)


@pytest.mark.gpu
@pytest.mark.parametrize(("N", "H", "D"), [(1, 1, 2), (37, 3, 6), (256, 16, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_vision_rope_matches_reference(N: int, H: int, D: int, dtype: torch.dtype) -> None:
    pytest.importorskip("triton")
    from kernels._testing import device_for_kernel_tests, poison_allocator

    device = device_for_kernel_tests()
    qkv, cos, sin = _vision_inputs(N, H, D, dtype, device)
    want = rope.reference.rotate_vision_qkv(qkv, cos, sin)
    poison_allocator(device)
    got = rope.rotate_vision_qkv(qkv, cos, sin, use_kernel=True)
    assert got.shape == qkv.shape and got.dtype == dtype
    if device.type == "cuda":  # float32 products and sums, no fused multiply-add, one rounding
        assert torch.equal(got, want)
    else:  # the interpreter's casts truncate
        assert_close("qk", want[:, :2], got[:, :2], 1e-2)
        assert torch.equal(got[:, 2], want[:, 2])
